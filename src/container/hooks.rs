//! Hooks (`config.json`'s `hooks`): each runs with its `args` (the first is `argv[0]`) and
//! `env` only, the container's state on stdin, and its `timeout`.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use super::ContainerError;

/// Runs `hooks` in order; the first that fails (non-zero, killed, timed out, not startable)
/// ends the run with an error naming the point (`createRuntime`, ...) and the hook.
pub fn run(point: &str, hooks: &[Hook], state: &serde_json::Value) -> Result<(), ContainerError> {
    let input = serde_json::to_vec(state).unwrap_or_default();
    for hook in hooks {
        run_one(hook, &input).map_err(|why| {
            ContainerError::Hook(format!("{point} hook {} failed: {why}", hook.path().display()))
        })?;
    }
    Ok(())
}

/// Runs `hooks` like [`run`], but only warns on failure (poststart and poststop: the
/// specification has the lifecycle go on).
pub fn run_warning(point: &str, hooks: &[Hook], state: &serde_json::Value) {
    let input = serde_json::to_vec(state).unwrap_or_default();
    for hook in hooks {
        if let Err(why) = run_one(hook, &input) {
            tracing::warn!("{point} hook {} failed: {why}", hook.path().display());
        }
    }
}

fn run_one(hook: &Hook, input: &[u8]) -> Result<(), String> {
    let mut cmd = Command::new(hook.path());
    let args = hook.args().as_deref().unwrap_or(&[]);
    if let Some((first, rest)) = args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().as_deref().unwrap_or(&[]) {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(input);
    }
    let deadline = hook
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t));
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() { Ok(()) } else { Err(format!("it exited with {status}")) };
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("it did not finish within {} s", hook.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
