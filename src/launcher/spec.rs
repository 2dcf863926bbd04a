//! [`LaunchSpec`]: everything that describes one machine launch, as a plain value.

use std::path::{Path, PathBuf};

use crate::names::MachineName;
use crate::signals::SignalNumber;

use super::cgroups::CgroupConfig;
use super::security::CapabilityAdjust;

/// What runs as the machine's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The tree's init as PID 1 (`mctl boot`).
    Boot {
        /// Extra arguments for init.
        args: Vec<String>,
    },
    /// One command (`mctl run`).
    Command {
        /// The command and its arguments.
        argv: Vec<String>,
        /// Run a minimal reaper as PID 1 and the command as PID 2.
        as_pid2: bool,
    },
}

/// How the machine's console is connected to the launcher (nspawn's `--console=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsoleMode {
    /// A pty, forwarded both ways; the launcher's terminal in raw mode.
    Interactive,
    /// A pty whose output is forwarded; input is not.
    ReadOnly,
    /// A pty that is drained but not shown.
    Passive,
    /// No pty: the payload gets the launcher's stdin, stdout and stderr.
    Pipe,
}

/// A `--bind`/`--bind-ro` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path in the machine.
    pub dest: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
    /// Submounts of the source come along (`rbind`, the default).
    pub recursive: bool,
}

/// A `--tmpfs` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Absolute path in the machine.
    pub dest: PathBuf,
    /// tmpfs options (`mode=0755` when none were given).
    pub options: String,
}

/// One machine launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The machine's root directory on the host (absolute, canonical).
    pub root: PathBuf,
    /// Machine name.
    pub name: MachineName,
    /// Hostname inside (default: the machine name).
    pub hostname: Option<String>,
    /// `--uuid`; the tree's `/etc/machine-id` takes precedence.
    pub uuid: Option<uuid::Uuid>,
    /// Init or command.
    pub payload: Payload,
    /// Extra bind mounts.
    pub binds: Vec<BindMount>,
    /// Extra tmpfs mounts.
    pub tmpfs: Vec<TmpfsMount>,
    /// Extra environment (`--setenv`), in order.
    pub env: Vec<(String, String)>,
    /// Working directory inside.
    pub chdir: Option<PathBuf>,
    /// User to run the command as.
    pub user: Option<String>,
    /// Mount the root read-only.
    pub read_only: bool,
    /// Capability changes against the default set.
    pub capabilities: CapabilityAdjust,
    /// What SIGTERM/SIGINT to the launcher sends to PID 1 first.
    pub kill_signal: Option<SignalNumber>,
    /// Stay in the caller's cgroup and exit 133 on reboot (for service units).
    pub keep_unit: bool,
    /// Fewer messages.
    pub quiet: bool,
    /// Console wiring.
    pub console: ConsoleMode,
    /// Report READY=1 upwards only when the payload does.
    pub notify_ready: bool,
    /// Where the machine's cgroup goes.
    pub cgroup: CgroupConfig,
    /// Whether to register with mctld.
    pub register: super::register::RegisterMode,
}

impl LaunchSpec {
    /// The hostname the machine gets.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(self.name.as_str())
    }

    /// Whether this launch boots an init.
    pub fn is_boot(&self) -> bool {
        matches!(self.payload, Payload::Boot { .. })
    }
}

/// A malformed option value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A path that must be absolute is not.
    #[error("{what} '{path}' must be an absolute path")]
    NotAbsolute {
        /// Which option.
        what: &'static str,
        /// The value given.
        path: String,
    },
    /// An option with an unknown flag.
    #[error("unknown {what} option '{option}'")]
    UnknownOption {
        /// Which option.
        what: &'static str,
        /// The flag given.
        option: String,
    },
    /// `--setenv` without a valid variable name.
    #[error("invalid environment assignment '{0}' (expected NAME=VALUE or NAME)")]
    BadEnv(String),
    /// A destination that would hide the machine's API filesystems.
    #[error("{what} destination '{path}' would cover the machine's root or a filesystem mctl sets up")]
    ReservedDest {
        /// Which option.
        what: &'static str,
        /// The destination.
        path: String,
    },
}

fn absolute(what: &'static str, p: &str) -> Result<PathBuf, SpecError> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(SpecError::NotAbsolute { what, path: p.to_owned() });
    }
    Ok(normalize(path))
}

/// Removes `.` components and duplicate slashes (not `..`: that stays for the kernel to
/// confine when the path is resolved inside the machine).
fn normalize(p: &Path) -> PathBuf {
    p.components().collect()
}

fn check_dest(what: &'static str, dest: &Path) -> Result<(), SpecError> {
    // Covering these would break the machine or defeat the sandbox (a writable /proc/sys).
    const RESERVED: [&str; 4] = ["/", "/proc", "/sys", "/dev"];
    if RESERVED.iter().any(|r| dest == Path::new(r)) {
        return Err(SpecError::ReservedDest { what, path: dest.display().to_string() });
    }
    Ok(())
}

/// Parses `SRC[:DST[:OPTIONS]]` (nspawn's `--bind` syntax; OPTIONS is `rbind` or `norbind`).
/// A relative SRC is taken relative to `cwd`.
pub fn parse_bind(arg: &str, read_only: bool, cwd: &Path) -> Result<BindMount, SpecError> {
    let what = if read_only { "--bind-ro" } else { "--bind" };
    let mut parts = arg.splitn(3, ':');
    let src = parts.next().unwrap_or_default();
    let source = if Path::new(src).is_absolute() { normalize(Path::new(src)) } else { cwd.join(src) };
    let dest = match parts.next() {
        Some(d) if !d.is_empty() => absolute(what, d)?,
        _ => absolute(what, &source.to_string_lossy())?,
    };
    let mut recursive = true;
    if let Some(opts) = parts.next() {
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt {
                "rbind" => recursive = true,
                "norbind" => recursive = false,
                other => {
                    return Err(SpecError::UnknownOption { what, option: other.to_owned() });
                }
            }
        }
    }
    check_dest(what, &dest)?;
    Ok(BindMount { source, dest, read_only, recursive })
}

/// Parses `PATH[:OPTIONS]` (nspawn's `--tmpfs` syntax).
pub fn parse_tmpfs(arg: &str) -> Result<TmpfsMount, SpecError> {
    let (path, options) = match arg.split_once(':') {
        Some((p, o)) => (p, o.to_owned()),
        None => (arg, "mode=0755".to_owned()),
    };
    let dest = absolute("--tmpfs", path)?;
    check_dest("--tmpfs", &dest)?;
    Ok(TmpfsMount { dest, options })
}

/// Parses `NAME=VALUE`, or `NAME` to pass the launcher's own value.
pub fn parse_setenv(arg: &str) -> Result<(String, String), SpecError> {
    let (name, value) = match arg.split_once('=') {
        Some((n, v)) => (n, v.to_owned()),
        None => (arg, std::env::var(arg).unwrap_or_default()),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(SpecError::BadEnv(arg.to_owned()));
    }
    Ok((name.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_syntax() {
        let cwd = Path::new("/work");
        assert_eq!(
            parse_bind("/a", false, cwd).unwrap(),
            BindMount { source: "/a".into(), dest: "/a".into(), read_only: false, recursive: true }
        );
        assert_eq!(
            parse_bind("rel:/x/:norbind", true, cwd).unwrap(),
            BindMount { source: "/work/rel".into(), dest: "/x".into(), read_only: true, recursive: false }
        );
        assert!(matches!(parse_bind("/a:x", false, cwd), Err(SpecError::NotAbsolute { .. })));
        assert!(matches!(parse_bind("/a:/b:idmapx", false, cwd), Err(SpecError::UnknownOption { .. })));
        assert!(matches!(parse_bind("/a:/proc", false, cwd), Err(SpecError::ReservedDest { .. })));
    }

    #[test]
    fn tmpfs_and_env_syntax() {
        assert_eq!(parse_tmpfs("/scratch").unwrap().options, "mode=0755");
        assert_eq!(parse_tmpfs("/s:size=1m").unwrap().options, "size=1m");
        assert!(parse_tmpfs("s").is_err());
        assert_eq!(parse_setenv("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_setenv("=x").is_err());
        assert!(parse_setenv("1A=x").is_err());
        assert!(parse_setenv("A-B=x").is_err());
    }
}
