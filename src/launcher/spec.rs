//! [`LaunchSpec`]: everything that describes one machine launch, as a plain value.

use std::path::{Path, PathBuf};

use crate::names::MachineName;
use crate::signals::SignalNumber;

use super::security::CapabilityAdjust;
use crate::cgroups::CgroupConfig;

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
    /// Mounted idmapped through the machine's user namespace (`idmap`): host files owned by
    /// 0..N appear owned by the machine's ids 0..N.
    pub idmap: bool,
}

/// `--volatile=`: how much of the image is kept from being written (nspawn's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Volatile {
    /// The image as it is.
    #[default]
    No,
    /// A tmpfs root with only `/usr` from the image (read-only).
    Yes,
    /// The image read-only, with a tmpfs on `/var`.
    State,
    /// The image read-only under a tmpfs overlay: writes land in memory and are discarded.
    Overlay,
}

/// A `--overlay`/`--overlay-ro` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower directories on the host, lowest first.
    pub lowers: Vec<PathBuf>,
    /// Upper directory on the host; `None` for a throwaway tmpfs (or for `--overlay-ro`).
    pub upper: Option<PathBuf>,
    /// Mount point in the machine.
    pub dest: PathBuf,
    /// `--overlay-ro`: no upper layer at all.
    pub read_only: bool,
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
    /// The machine's root directory on the host (absolute, canonical); for a disk image, the
    /// image until the launcher has mounted it, then the mounted tree.
    pub root: PathBuf,
    /// `-i`: the disk image (file or block device, canonical) the root comes from.
    pub image: Option<PathBuf>,
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
    /// Boot a throwaway overlay of the image (`-x`).
    pub ephemeral: bool,
    /// `--volatile=`.
    pub volatile: Volatile,
    /// `--overlay`/`--overlay-ro` requests.
    pub overlays: Vec<OverlayMount>,
    /// Runtime directory on the host for per-launch scratch mount points (`/run/mctl`).
    pub runtime_dir: PathBuf,
    /// Where state that outlives a boot of the host lives (the id range each image had).
    pub state_dir: PathBuf,
    /// Capability changes against the default set.
    pub capabilities: CapabilityAdjust,
    /// Changes to the default system call filter (`--system-call-filter=`).
    pub syscall_filter: crate::seccomp::FilterChanges,
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
    /// The machine's network.
    pub network: crate::network::NetworkSpec,
    /// `--private-users`: a user namespace, and which ids it maps onto.
    pub private_users: crate::userns::PrivateUsers,
    /// `--private-users-ownership`: how the image's files appear owned inside.
    pub private_users_ownership: crate::userns::Ownership,
    /// `--no-new-privileges`: the payload runs with the no_new_privs flag.
    pub no_new_privileges: bool,
    /// `--set-credential`, `--load-credential`.
    pub credentials: Vec<super::credentials::Credential>,
    /// `--inaccessible`: paths covered by an empty, unreadable node.
    pub inaccessible: Vec<PathBuf>,
    /// `--bind-user`: host users mapped into the machine (their homes are among `binds`).
    pub bind_users: Vec<super::bind_user::BoundUser>,
    /// `--rlimit`, `--oom-score-adjust`, `--cpu-affinity`, `--personality`.
    pub attributes: super::attributes::PayloadAttributes,
    /// `--property`: resource limits on the machine's cgroup, in the order given.
    pub resources: Vec<crate::cgroups::resources::Property>,
    /// `--resolv-conf`: what the machine's /etc/resolv.conf becomes.
    pub resolv_conf: super::host_etc::ResolvConf,
    /// `--timezone`: what the machine's /etc/localtime becomes.
    pub timezone: super::host_etc::Timezone,
    /// `--link-journal`, `-j`: how the machine's journal is linked to the host's.
    pub link_journal: super::journal::LinkJournal,
}

#[cfg(test)]
impl LaunchSpec {
    /// A plain `run` of `/bin/true` in `root`, named `test`, with every option at its default.
    pub fn for_test(root: &Path) -> LaunchSpec {
        LaunchSpec {
            root: root.to_owned(),
            image: None,
            name: MachineName::new("test").expect("a valid name"),
            hostname: None,
            uuid: None,
            payload: Payload::Command { argv: vec!["/bin/true".into()], as_pid2: false },
            binds: Vec::new(),
            tmpfs: Vec::new(),
            env: Vec::new(),
            chdir: None,
            user: None,
            read_only: false,
            ephemeral: false,
            volatile: Volatile::No,
            overlays: Vec::new(),
            runtime_dir: PathBuf::from("/run/mctl"),
            state_dir: PathBuf::from("/var/lib/mctl"),
            capabilities: CapabilityAdjust::default(),
            syscall_filter: crate::seccomp::FilterChanges::default(),
            kill_signal: None,
            keep_unit: false,
            quiet: true,
            console: ConsoleMode::Pipe,
            notify_ready: false,
            cgroup: CgroupConfig::default(),
            register: super::register::RegisterMode::No,
            network: crate::network::NetworkSpec::new(crate::network::NetworkMode::Host),
            private_users: crate::userns::PrivateUsers::No,
            private_users_ownership: crate::userns::Ownership::Auto,
            no_new_privileges: false,
            resources: Vec::new(),
            attributes: Default::default(),
            inaccessible: Vec::new(),
            resolv_conf: Default::default(),
            timezone: Default::default(),
            link_journal: Default::default(),
            credentials: Vec::new(),
            bind_users: Vec::new(),
        }
    }
}

impl LaunchSpec {
    /// The hostname the machine gets.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(self.name.as_str())
    }

    /// Whether the image itself is never written (so it can be shared with other machines).
    pub fn image_untouched(&self) -> bool {
        self.read_only || self.ephemeral || self.volatile != Volatile::No
    }

    /// Whether the root is a throwaway overlay (`-x` of a disk image runs on a copy instead).
    pub fn root_overlay(&self) -> bool {
        (self.ephemeral && self.image.is_none()) || self.volatile == Volatile::Overlay
    }

    /// Whether the launch needs a scratch tmpfs (for overlay layers or a volatile root).
    pub fn needs_scratch(&self) -> bool {
        self.root_overlay() || self.volatile != Volatile::No || !self.overlays.is_empty()
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
    /// A malformed `--overlay`.
    #[error("{0}")]
    Overlay(String),
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

/// Parses `SRC[:DST[:OPTIONS]]` (nspawn's `--bind` syntax; OPTIONS are `rbind` or `norbind`,
/// and `idmap` or `noidmap`).
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
    let (mut recursive, mut idmap) = (true, false);
    if let Some(opts) = parts.next() {
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt {
                "rbind" => recursive = true,
                "norbind" => recursive = false,
                "idmap" => idmap = true,
                "noidmap" => idmap = false,
                other => {
                    return Err(SpecError::UnknownOption { what, option: other.to_owned() });
                }
            }
        }
    }
    check_dest(what, &dest)?;
    Ok(BindMount { source, dest, read_only, recursive, idmap })
}

/// Parses nspawn's `--overlay` syntax: `LOWER[:LOWER...]:UPPER:DEST` (an empty UPPER means a
/// throwaway tmpfs), or for `--overlay-ro` `LOWER[:LOWER...]:DEST`. Host paths must be
/// absolute; a single path means `PATH:PATH` lower and destination, as in nspawn.
pub fn parse_overlay(arg: &str, read_only: bool) -> Result<OverlayMount, SpecError> {
    let what = if read_only { "--overlay-ro" } else { "--overlay" };
    let parts: Vec<&str> = arg.split(':').collect();
    let min = if read_only { 2 } else { 3 };
    if parts.len() < min {
        return Err(SpecError::Overlay(format!(
            "{what}={arg}: expected {}",
            if read_only { "LOWER[:LOWER...]:DEST" } else { "LOWER[:LOWER...]:UPPER:DEST" }
        )));
    }
    let dest = absolute(what, parts[parts.len() - 1])?;
    check_dest(what, &dest)?;
    let (lower_parts, upper) = if read_only {
        (&parts[..parts.len() - 1], None)
    } else {
        let u = parts[parts.len() - 2];
        (&parts[..parts.len() - 2], if u.is_empty() { None } else { Some(absolute(what, u)?) })
    };
    let lowers = lower_parts.iter().map(|l| absolute(what, l)).collect::<Result<Vec<_>, _>>()?;
    for p in lowers.iter().chain(upper.iter()) {
        // overlayfs takes its layers as ','- and ':'-separated mount options.
        if p.to_string_lossy().contains([',', '\\']) {
            return Err(SpecError::Overlay(format!("{what}: path {} contains ',' or '\\'", p.display())));
        }
    }
    Ok(OverlayMount { lowers, upper, dest, read_only })
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
            BindMount {
                source: "/a".into(),
                dest: "/a".into(),
                read_only: false,
                recursive: true,
                idmap: false
            }
        );
        assert_eq!(
            parse_bind("rel:/x/:norbind", true, cwd).unwrap(),
            BindMount {
                source: "/work/rel".into(),
                dest: "/x".into(),
                read_only: true,
                recursive: false,
                idmap: false
            }
        );
        let b = parse_bind("/a:/b:norbind,idmap", false, cwd).unwrap();
        assert!(b.idmap && !b.recursive);
        assert!(matches!(parse_bind("/a:x", false, cwd), Err(SpecError::NotAbsolute { .. })));
        assert!(matches!(parse_bind("/a:/b:idmapx", false, cwd), Err(SpecError::UnknownOption { .. })));
        assert!(matches!(parse_bind("/a:/proc", false, cwd), Err(SpecError::ReservedDest { .. })));
    }

    #[test]
    fn overlay_syntax() {
        let o = parse_overlay("/a:/b:/up:/dst", false).unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(o.upper, Some(PathBuf::from("/up")));
        assert_eq!(o.dest, PathBuf::from("/dst"));
        assert_eq!(parse_overlay("/a::/dst", false).unwrap().upper, None);
        let ro = parse_overlay("/a:/b:/dst", true).unwrap();
        assert_eq!((ro.lowers.len(), ro.upper, ro.read_only), (2, None, true));
        assert!(parse_overlay("/a:/dst", false).is_err());
        assert!(parse_overlay("/a:rel:/dst", false).is_err());
        assert!(parse_overlay("/a,b::/dst", false).is_err());
        assert!(parse_overlay("/a:/proc", true).is_err());
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
