//! `mctl shell [USER@]NAME [COMMAND...]`: a shell or command inside a running machine, without
//! needing D-Bus in the guest: finds the machine through mctld, then enters it with
//! [`launcher::enter`](crate::launcher::enter) (its namespaces, a cgroup of its own below the
//! machine's, the machine's capabilities and system call filter, a pty of the machine's devpts
//! when interactive).

use std::io::IsTerminal;

use crate::bus::OWN_NAME;
use crate::bus::proxy::{self, Manager1Proxy, MctlManager1Proxy};
use crate::launcher::enter;
use crate::launcher::spec::parse_setenv;
use crate::sys::linux;

use super::args::ShellArgs;
use super::manage::describe;
use super::{CliConfig, CliError};

/// What `mctl shell` needs to know about the machine.
struct Target {
    leader: u32,
    cgroup: String,
}

fn lookup(name: &str) -> Result<Target, CliError> {
    let name = name.to_owned();
    crate::runtime::block_on_thread(move || async move {
        let conn = crate::bus::client::system_bus().await.map_err(|e| {
            CliError::new(format!(
                "cannot reach mctld on the system bus: {} (is mctld running?)",
                describe(&e)
            ))
        })?;
        let mgr = Manager1Proxy::new(&conn).await.map_err(|e| CliError::new(describe(&e)))?;
        let path = mgr.get_machine(&name).await.map_err(|e| CliError::new(describe(&e)))?;
        let props = proxy::all_properties(&conn, OWN_NAME, path.as_str())
            .await
            .map_err(|e| CliError::new(describe(&e)))?;
        let leader = match props.get("Leader").map(|v| &**v) {
            Some(zbus::Variant::U32(l)) => *l,
            _ => return Err(CliError::new(format!("machine {name} has no leader"))),
        };
        let cgroup = match MctlManager1Proxy::new(&conn).await {
            Ok(p) => p.get_machine_control_group(&name).await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Ok(Target { leader, cgroup })
    })
    .unwrap_or_else(|| Err(CliError::new("the D-Bus client could not run")))
}

/// `mctl shell`.
pub fn shell(a: &ShellArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::new("mctl shell must run as root (it enters the machine's namespaces)"));
    }
    // The command is visible inside the machine before it executes: it must not map the host's
    // binary (see `launcher::enter`). First, while single-threaded.
    linux::ensure_running_from_sealed_copy()
        .map_err(|e| CliError::new(format!("cannot run from a sealed copy of mctl: {e}")))?;
    let (user, name) = match a.target.split_once('@') {
        Some((u, n)) => (u.to_owned(), n.to_owned()),
        None => ("root".to_owned(), a.target.clone()),
    };
    let env = a
        .setenv
        .iter()
        .map(|e| parse_setenv(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::new(e.to_string()))?;
    let target = lookup(&name)?;
    let bounding = crate::procfs::bounding_set(target.leader)
        .map_err(|e| CliError::new(format!("cannot read the machine's capabilities: {e}")))?;
    let seccomp = crate::seccomp::SyscallFilter::for_machine(
        &bounding,
        &Default::default(),
        Some(&cfg.runtime_dir.join("seccomp")),
    )
    .map_err(|e| CliError::new(e.to_string()))?;
    let cgroup = crate::cgroups::EntryCgroup::create(&Default::default(), &target.cgroup, "mctl-shell");
    let spec = enter::EnterSpec {
        leader: target.leader,
        leader_start: None,
        user,
        payload: if a.command.is_empty() {
            enter::Payload::LoginShell
        } else {
            enter::Payload::Command(a.command.clone())
        },
        env,
        terminal: if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            enter::Terminal::Forward
        } else {
            enter::Terminal::Inherit
        },
        cgroup: cgroup.as_ref().map(|c| c.path().to_owned()),
        bounding,
        seccomp,
        host_fds: Vec::new(),
        on_host: false,
        via_guest_systemd: false,
    };
    enter::run(&spec).map_err(|e| CliError { message: e.to_string(), exit_code: e.exit_code() })
}

/// `mctl login NAME`: a login prompt of the machine on a new terminal, through mctld
/// (OpenMachineLogin), forwarded to ours until the escape (`^]` three times), as machinectl.
pub fn login(name: &str) -> Result<i32, CliError> {
    use crate::launcher::console::Console;
    use crate::launcher::events::{self, Event, Events};
    use crate::launcher::spec::ConsoleMode;
    if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return Err(CliError::new("mctl login needs a terminal on stdin and stdout"));
    }
    let machine = name.to_owned();
    let master = super::manage::with_bus(move |conn| async move {
        let mgr = Manager1Proxy::new(&conn).await.map_err(super::manage::unreachable)?;
        let (master, _path) = mgr
            .open_machine_login(&machine)
            .await
            .map_err(|e| super::manage::call_error("Failed to get login PTY", e))?;
        Ok(std::os::fd::OwnedFd::from(master))
    })?;
    let failed = |step: &str| {
        let step = step.to_owned();
        move |e: std::io::Error| CliError::new(format!("cannot {step}: {e}"))
    };
    let sigfd = events::signalfd().map_err(failed("handle signals"))?;
    let console = Console::new(master, ConsoleMode::Interactive).map_err(failed("set up the terminal"))?;
    eprintln!("Connected to machine {name}. Press ^] three times within 1s to exit session.");
    let mut events = Events::new(&sigfd, None, Some(console)).map_err(failed("watch the terminal"))?;
    'session: loop {
        for event in events.wait(None).map_err(failed("wait for the terminal"))? {
            if matches!(event, Event::Escape | Event::Signal(_)) {
                break 'session;
            }
        }
    }
    events.finish();
    eprintln!("Connection to machine {name} terminated.");
    Ok(0)
}
