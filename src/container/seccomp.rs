//! `linux.seccomp` from `config.json` as a libseccomp filter: the default action, the
//! architectures, and each rule with its action and argument conditions (runc's semantics:
//! names the kernel or libseccomp does not know are skipped; conditions on distinct arguments
//! are one rule, several on the same argument one rule each). Calls a rule hands to a seccomp
//! agent (`SCMP_ACT_NOTIFY`) reach it through the descriptor [`hand_to_agent`] sends to
//! `listenerPath`.

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

/// A filter that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct SeccompError(String);

fn err(what: impl std::fmt::Display) -> SeccompError {
    SeccompError(what.to_string())
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(i32::try_from(errno.unwrap_or(libc::EPERM as u32)).map_err(err)?)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(u16::try_from(errno.unwrap_or(libc::EPERM as u32)).map_err(err)?)
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

/// Whether any rule hands its calls to a seccomp agent.
pub fn notifies(cfg: &LinuxSeccomp) -> bool {
    cfg.syscalls().as_deref().unwrap_or(&[]).iter().any(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
}

/// The runtime-spec's rules for agents: a socket to reach one, and no notification for the
/// calls the runtime itself makes once the filter is loaded (the process would wait for an
/// agent that has not yet got the descriptor).
fn check_notify(cfg: &LinuxSeccomp) -> Result<(), SeccompError> {
    if cfg.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(err(
            "SCMP_ACT_NOTIFY cannot be the default action: name the calls an agent should handle",
        ));
    }
    if !notifies(cfg) {
        return Ok(());
    }
    if cfg.listener_path().as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
        return Err(err(
            "SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath, the socket of the seccomp agent that answers the calls",
        ));
    }
    for rule in cfg.syscalls().as_deref().unwrap_or(&[]) {
        if rule.action() == LinuxSeccompAction::ScmpActNotify
            && let Some(name) = rule.names().iter().find(|n| RUNTIME_CALLS.contains(&n.as_str()))
        {
            return Err(err(format!(
                "SCMP_ACT_NOTIFY cannot be used for {name}: the runtime needs it to hand the agent its descriptor"
            )));
        }
    }
    Ok(())
}

/// What the process calls between loading a notifying filter and the agent getting its fd.
const RUNTIME_CALLS: [&str; 3] = ["write", "sendmsg", "sendto"];

/// Sends a filter's notification fd to the agent at `listenerPath`, as runtime-spec says: one
/// message whose payload is the container process state and whose one descriptor is the fd.
pub fn hand_to_agent(
    cfg: &LinuxSeccomp,
    fd: std::os::fd::BorrowedFd<'_>,
    pid: i32,
    state: &serde_json::Value,
) -> Result<(), SeccompError> {
    let path = cfg.listener_path().clone().unwrap_or_default();
    let sock = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| err(format!("cannot connect to the seccomp agent at {}: {e}", path.display())))?;
    let message = serde_json::json!({
        "ociVersion": super::OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": cfg.listener_metadata().clone().unwrap_or_default(),
        "state": state,
    });
    super::sync::send_fd(std::os::fd::AsFd::as_fd(&sock), fd, &message.to_string())
        .map_err(|e| err(format!("cannot send the seccomp agent at {} its descriptor: {e}", path.display())))
}

fn compare(arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<ScmpArgCompare, SeccompError> {
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // The mask is `value`, the compared datum `valueTwo`.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return Ok(ScmpArgCompare::new(
                u32::try_from(arg.index()).map_err(err)?,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            ));
        }
    };
    if arg.index() > 5 {
        return Err(err(format!("argument index {} out of range (0..5)", arg.index())));
    }
    Ok(ScmpArgCompare::new(u32::try_from(arg.index()).map_err(err)?, op, arg.value()))
}

/// Builds the filter (not loaded).
pub fn build(cfg: &LinuxSeccomp) -> Result<ScmpFilterContext, SeccompError> {
    check_notify(cfg)?;
    let default = action(cfg.default_action(), cfg.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    // libseccomp would set no_new_privs itself; whether the process gets it is
    // process.noNewPrivileges' to say.
    ctx.set_ctl_nnp(false).map_err(err)?;
    for arch in cfg.architectures().as_deref().unwrap_or(&[]) {
        let name = serde_json::to_value(arch).map_err(err)?;
        let name = name.as_str().unwrap_or_default();
        let arch: ScmpArch = name.parse().map_err(|_| err(format!("unknown architecture {name}")))?;
        ctx.add_arch(arch).map_err(err)?;
    }
    for flag in cfg.flags().as_deref().unwrap_or(&[]) {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                ctx.set_ctl_log(true).map_err(err)?;
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                ctx.set_ctl_ssb(true).map_err(err)?;
            }
            // The container's init is single-threaded; there is nothing to synchronise.
            _ => {}
        }
    }
    for rule in cfg.syscalls().as_deref().unwrap_or(&[]) {
        add_rule(&mut ctx, rule, default)?;
    }
    Ok(ctx)
}

fn add_rule(
    ctx: &mut ScmpFilterContext,
    rule: &LinuxSyscall,
    default: ScmpAction,
) -> Result<(), SeccompError> {
    let act = action(rule.action(), rule.errno_ret())?;
    // libseccomp refuses a rule whose action is the default one; it would change nothing.
    if act == default {
        return Ok(());
    }
    let conditions: Vec<ScmpArgCompare> =
        rule.args().as_deref().unwrap_or(&[]).iter().map(compare).collect::<Result<_, _>>()?;
    let mut indexes: Vec<usize> = rule.args().as_deref().unwrap_or(&[]).iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    let distinct = indexes.windows(2).all(|w| w[0] != w[1]);
    for name in rule.names() {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            tracing::debug!("seccomp: skipping unknown system call {name}");
            continue;
        };
        if conditions.is_empty() {
            ctx.add_rule(act, syscall).map_err(|e| err(format!("{name}: {e}")))?;
        } else if distinct {
            ctx.add_rule_conditional(act, syscall, &conditions).map_err(|e| err(format!("{name}: {e}")))?;
        } else {
            for c in &conditions {
                ctx.add_rule_conditional(act, syscall, std::slice::from_ref(c))
                    .map_err(|e| err(format!("{name}: {e}")))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str) -> LinuxSeccomp {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn profiles_build() {
        let p = parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
               "syscalls":[{"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"},
                           {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                           {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                           {"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        build(&p).unwrap();
    }

    #[test]
    fn notify_needs_an_agent_and_spares_the_runtimes_calls() {
        let e = build(&parse(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#)).err().unwrap().to_string();
        assert!(e.contains("default action"), "{e}");
        let rule = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]"#;
        let e = build(&parse(&format!("{rule}}}"))).err().unwrap().to_string();
        assert!(e.contains("listenerPath"), "{e}");
        let ok = parse(&format!(r#"{rule},"listenerPath":"/run/agent.sock"}}"#));
        assert!(notifies(&ok));
        build(&ok).unwrap();
        let e = build(&parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/a","syscalls":[{"names":["mkdir","sendmsg"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("cannot be used for sendmsg"), "{e}");
    }
}
