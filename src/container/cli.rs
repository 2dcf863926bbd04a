//! `mctl-runc`: runc's command line, so that engines that call runc (podman through conmon,
//! containerd's runc shim, CRI-O) can call mctl instead. Errors go to stderr and, with
//! `--log`, to the log file (`--log-format=json` as runc writes it, which conmon reads back);
//! the exit status is 1 for a failed operation, and the process's own for `run` and `exec`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use oci_spec::runtime::{LinuxResources, Process, Spec};

use super::console::{self, ConsoleSocket, Relay};
use super::create::{self, CreateOptions};
use super::exec::{self, ExecOptions};
use super::state::{DEFAULT_ROOT, Status, Store};
use super::{ContainerError, OCI_VERSION};
use crate::cgroups::CgroupConfig;
use crate::cli::output::emit;

/// mctl's OCI runtime, with runc's command line.
#[derive(Debug, Parser)]
#[command(name = "mctl-runc", version = version(), about, disable_version_flag = true)]
pub struct Cli {
    /// Where container state is kept.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// The log's format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// cgroupsPath is systemd's slice:prefix:name.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// More messages.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Register containers with mctld (`auto`: when it answers on the system bus).
    #[arg(long, global = true, value_enum, env = "MCTL_RUNC_REGISTER", default_value = "auto")]
    pub register: crate::launcher::register::RegisterMode,
    /// Accepted for runc compatibility (rootless mode is detected); before the operation.
    #[arg(long, value_name = "true|false|auto")]
    pub rootless: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long, action = clap::ArgAction::Version)]
    version: Option<bool>,
    /// The operation.
    #[command(subcommand)]
    pub command: Command,
}

fn version() -> String {
    format!("{} (mctl)\nspec: {OCI_VERSION}", env!("CARGO_PKG_VERSION"))
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `time="..." level=error msg="..."`.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `create` and `run` share.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// A unix socket the pty master is sent to (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Write the init's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Move the rootfs over / instead of pivot_root (for ramdisk roots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility (no session keyring is made).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass descriptors 3..3+N on to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container id.
    pub id: String,
}

/// Operations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container's process.
    Start {
        /// The container id.
        id: String,
    },
    /// Create and start a container, wait for it and delete it.
    Run {
        /// What `create` takes.
        #[command(flatten)]
        create: CreateArgs,
        /// Return once it runs.
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container when it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Print a container's state as JSON.
    State {
        /// The container id.
        id: String,
    },
    /// Send a signal (SIGTERM by default) to the container's init.
    Kill {
        /// To every process of the container.
        #[arg(short, long)]
        all: bool,
        /// The container id.
        id: String,
        /// Name (KILL, SIGKILL) or number.
        signal: Option<String>,
    },
    /// Delete a stopped container (any, with --force).
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// The container id.
        id: String,
    },
    /// Run another process in a container.
    Exec(ExecArgs),
    /// List a container's processes.
    Ps {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// The container id.
        id: String,
        /// Options for ps(1).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause {
        /// The container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// The container id.
        id: String,
    },
    /// Change a container's resources.
    Update(UpdateArgs),
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print what this runtime supports (the runtime-spec features document).
    Features,
    /// Write a default config.json.
    Spec {
        /// Where to write it.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A configuration for a user without privileges.
        #[arg(long)]
        rootless: bool,
    },
}

/// `exec`'s options.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A unix socket the pty master is sent to.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Environment variables (KEY=VALUE).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// UID[:GID].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional groups.
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// A process.json to run instead of the command line.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Set no_new_privs.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability.
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Pass descriptors 3..3+N on.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// The SELinux label the process runs under.
    #[arg(long)]
    pub process_label: Option<String>,
    /// The AppArmor profile the process runs under.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// The container id.
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `update`'s options.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// A resources JSON file (`-` for stdin).
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory: Option<i64>,
    /// Memory plus swap in bytes.
    #[arg(long)]
    pub memory_swap: Option<i64>,
    /// Maximum number of tasks.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// CPU quota in µs per period.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU period in µs.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU shares.
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// The container id.
    pub id: String,
}

/// Runs the command line; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::logging::init(!cli.debug);
    let log = Log { path: cli.log.clone(), format: cli.log_format };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            log.error(&e.to_string());
            1
        }
    }
}

struct Log {
    path: Option<PathBuf>,
    format: LogFormat,
}

impl Log {
    fn error(&self, msg: &str) {
        eprintln!("mctl-runc: {msg}");
        let Some(path) = &self.path else { return };
        let time = create::now_rfc3339();
        let line = match self.format {
            LogFormat::Json => serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string(),
            LogFormat::Text => format!("time=\"{time}\" level=error msg={:?}", msg),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn create_options(cli: &Cli, a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone().map(ConsoleSocket::Path),
        preserve_fds: a.preserve_fds,
        no_pivot: a.no_pivot,
        systemd_cgroup: cli.systemd_cgroup,
        cgroups: CgroupConfig::default(),
        register: cli.register,
    }
}

fn run(cli: Cli) -> Result<i32, ContainerError> {
    let store = Store::new(&cli.root);
    match &cli.command {
        Command::Create(a) => {
            create::create(&store, &create_options(&cli, a))?;
            Ok(0)
        }
        Command::Start { id } => create::start(&store, id).map(|()| 0),
        Command::Run { create: a, detach, keep } => {
            let mut opts = create_options(&cli, a);
            let spec = create::load_config(&a.bundle)?;
            let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
            let relay;
            (opts.console_socket, relay) = console_for(terminal, *detach, &a.console_socket)?;
            let pid = create::create(&store, &opts)?;
            if let Err(e) = create::start(&store, &a.id) {
                let _ = create::delete(&store, &a.id, true);
                return Err(e);
            }
            if *detach {
                return Ok(0);
            }
            let code = match relay {
                Some(relay) => relay.run(pid).inspect_err(|_| {
                    let _ = create::delete(&store, &a.id, true);
                })?,
                None => exec::wait_forwarding_signals(pid),
            };
            if !keep {
                create::delete(&store, &a.id, true)?;
            }
            Ok(code)
        }
        Command::State { id } => {
            let v = create::state(&store, id)?;
            emit(&format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()));
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            create::kill(&store, id, sig, *all).map(|()| 0)
        }
        Command::Delete { force, id } => create::delete(&store, id, *force).map(|()| 0),
        Command::Exec(a) => exec::exec(&store, &a.id, exec_options(&store, a)?),
        Command::Ps { format, id, ps_args } => ps(&store, id, format, ps_args),
        Command::Pause { id } => create::pause(&store, id, true).map(|()| 0),
        Command::Resume { id } => create::pause(&store, id, false).map(|()| 0),
        Command::Update(a) => create::update(&store, &a.id, &update_resources(a)?).map(|()| 0),
        Command::List { format, quiet } => {
            list(&store, format, *quiet);
            Ok(0)
        }
        Command::Features => {
            emit(&format!("{}\n", serde_json::to_string_pretty(&features()).unwrap_or_default()));
            Ok(0)
        }
        Command::Spec { bundle, rootless } => write_spec(bundle, *rootless).map(|()| 0),
    }
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
pub fn parse_signal(s: &str) -> Result<i32, ContainerError> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(ContainerError::Invalid(format!("invalid signal number {n}")))
        };
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| ContainerError::Invalid(format!("unknown signal \"{s}\"")))
}

fn exec_options(store: &Store, a: &ExecArgs) -> Result<ExecOptions, ContainerError> {
    let process = match &a.process {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(ContainerError::io("read", path))?;
            serde_json::from_str::<Process>(&text).map_err(|e| ContainerError::Config {
                path: path.clone(),
                reason: format!("not a valid process: {e}"),
            })?
        }
        None => process_from_args(store, a)?,
    };
    let (console_socket, relay) =
        console_for(process.terminal().unwrap_or(false), a.detach, &a.console_socket)?;
    Ok(ExecOptions {
        process,
        console_socket,
        relay,
        detach: a.detach,
        pid_file: a.pid_file.clone(),
        preserve_fds: a.preserve_fds,
    })
}

/// The console socket for a process: the engine's, or with a terminal and none given, one
/// this process relays (as runc; a detached process has nobody to relay it).
fn console_for(
    terminal: bool,
    detach: bool,
    socket: &Option<PathBuf>,
) -> Result<(Option<ConsoleSocket>, Option<Relay>), ContainerError> {
    match (socket, terminal) {
        (Some(path), _) => Ok((Some(ConsoleSocket::Path(path.clone())), None)),
        (None, true) if detach => Err(ContainerError::Invalid(
            "cannot allocate a terminal for a detached process without --console-socket to send it to".into(),
        )),
        (None, true) => {
            let (socket, relay) = console::relay_pair()?;
            Ok((Some(socket), Some(relay)))
        }
        (None, false) => Ok((None, None)),
    }
}

/// runc's exec without `--process`: the container's process with the command, environment,
/// directory, user and capabilities from the command line.
fn process_from_args(store: &Store, a: &ExecArgs) -> Result<Process, ContainerError> {
    let locked = store.open(&a.id)?;
    let rec = locked.record.as_ref().ok_or_else(|| ContainerError::NotFound(a.id.clone()))?;
    let mut p = rec.config.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    if let Some(profile) = &a.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = &a.process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(a.env.iter().cloned());
    p.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        let parse = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| ContainerError::Invalid(format!("invalid --user '{u}': use UID[:GID]")))
        };
        let mut user = p.user().clone();
        user.set_uid(parse(uid)?);
        user.set_gid(parse(gid)?);
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut c = p.capabilities().clone().unwrap_or_default();
        let added: oci_spec::runtime::Capabilities = a
            .cap
            .iter()
            .map(|name| {
                serde_json::from_value(serde_json::Value::String(name.to_ascii_uppercase()))
                    .map_err(|_| ContainerError::Invalid(format!("unknown capability {name}")))
            })
            .collect::<Result<_, _>>()?;
        let plus = |set: Option<oci_spec::runtime::Capabilities>| {
            let mut s = set.unwrap_or_default();
            s.extend(added.iter().copied());
            Some(s)
        };
        c.set_bounding(plus(c.bounding().clone()));
        c.set_effective(plus(c.effective().clone()));
        c.set_permitted(plus(c.permitted().clone()));
        p.set_capabilities(Some(c));
    }
    Ok(p)
}

fn update_resources(a: &UpdateArgs) -> Result<LinuxResources, ContainerError> {
    let mut v: serde_json::Value = match &a.resources {
        Some(p) => {
            let text = if p == Path::new("-") {
                std::io::read_to_string(std::io::stdin()).map_err(ContainerError::io("read", "stdin"))?
            } else {
                std::fs::read_to_string(p).map_err(ContainerError::io("read", p))?
            };
            serde_json::from_str(&text).map_err(|e| ContainerError::Config {
                path: p.clone(),
                reason: format!("not valid resources: {e}"),
            })?
        }
        None => serde_json::json!({}),
    };
    let set = |v: &mut serde_json::Value, section: &str, key: &str, value: serde_json::Value| {
        if !v[section].is_object() {
            v[section] = serde_json::json!({});
        }
        v[section][key] = value;
    };
    if let Some(m) = a.memory {
        set(&mut v, "memory", "limit", m.into());
    }
    if let Some(m) = a.memory_swap {
        set(&mut v, "memory", "swap", m.into());
    }
    if let Some(n) = a.pids_limit {
        set(&mut v, "pids", "limit", n.into());
    }
    if let Some(q) = a.cpu_quota {
        set(&mut v, "cpu", "quota", q.into());
    }
    if let Some(p) = a.cpu_period {
        set(&mut v, "cpu", "period", p.into());
    }
    if let Some(s) = a.cpu_shares {
        set(&mut v, "cpu", "shares", s.into());
    }
    serde_json::from_value(v).map_err(|e| ContainerError::Invalid(format!("invalid resources: {e}")))
}

fn ps(store: &Store, id: &str, format: &str, ps_args: &[String]) -> Result<i32, ContainerError> {
    let pids = create::pids(store, id)?;
    match format {
        "json" => {
            emit(&format!("{}\n", serde_json::to_string(&pids).unwrap_or_default()));
            Ok(0)
        }
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() { vec!["-ef".into()] } else { ps_args.to_vec() };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .map_err(ContainerError::io("run", "ps"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let Some(header) = lines.next() else { return Ok(1) };
            let pid_col = header.split_whitespace().position(|h| h == "PID").ok_or_else(|| {
                ContainerError::Invalid("ps printed no PID column; use ps options that show it".into())
            })?;
            emit(&format!("{header}\n"));
            for l in lines {
                if l.split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_some_and(|p| pids.contains(&p))
                {
                    emit(&format!("{l}\n"));
                }
            }
            Ok(0)
        }
        other => Err(ContainerError::Invalid(format!("invalid format '{other}': use table or json"))),
    }
}

fn list(store: &Store, format: &str, quiet: bool) {
    let all = create::list(store);
    if quiet {
        for (r, _) in &all {
            emit(&format!("{}\n", r.id));
        }
        return;
    }
    if format == "json" {
        let v: Vec<serde_json::Value> = all.iter().map(|(r, s)| r.state_json(*s)).collect();
        emit(&format!("{}\n", serde_json::to_string(&v).unwrap_or_default()));
        return;
    }
    emit(&format!("{:<20} {:<10} {:<10} {:<40} {:<30} OWNER\n", "ID", "PID", "STATUS", "BUNDLE", "CREATED"));
    for (r, s) in &all {
        let pid = if *s == Status::Stopped { 0 } else { r.pid };
        emit(&format!(
            "{:<20} {:<10} {:<10} {:<40} {:<30} root\n",
            r.id,
            pid,
            s.to_string(),
            r.bundle.display(),
            r.created
        ));
    }
}

/// The runtime-spec features document.
pub fn features() -> serde_json::Value {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "idmap", "mand", "noatime",
            "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private",
            "rbind", "relatime", "ridmap", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw", "shared",
            "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                            "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                "knownFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
            },
            "apparmor": {"enabled": super::lsm::apparmor_enabled()},
            "selinux": {"enabled": super::lsm::selinux_enabled()},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}}
        },
        "annotations": {"org.opencontainers.runtime-spec.features.runtime": "mctl-runc"}
    })
}

fn write_spec(bundle: &Path, rootless: bool) -> Result<(), ContainerError> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(ContainerError::Invalid(format!("File {} exists. Remove it first", path.display())));
    }
    let mut spec = if rootless {
        Spec::rootless(nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
    } else {
        Spec::default()
    };
    spec.set_version(OCI_VERSION.into());
    spec.set_hostname(Some("mctl".into()));
    if let Some(mut p) = spec.process().clone() {
        p.set_args(Some(vec!["sh".into()]));
        p.set_terminal(Some(true));
        spec.set_process(Some(p));
    }
    if let Some(mut r) = spec.root().clone() {
        r.set_path("rootfs".into());
        r.set_readonly(Some(true));
        spec.set_root(Some(r));
    }
    let text = serde_json::to_string_pretty(&spec).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    super::state::write_atomic(&path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn runc_command_lines_parse() {
        let c = Cli::try_parse_from([
            "mctl-runc",
            "--root",
            "/tmp/r",
            "--log",
            "/tmp/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--console-socket",
            "/s",
            "id1",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Create(ref a) if a.id == "id1" && a.bundle == Path::new("/b")));
        let e = Cli::try_parse_from([
            "mctl-runc",
            "exec",
            "--pid-file",
            "/p",
            "--process",
            "/proc.json",
            "--detach",
            "--tty",
            "--console-socket",
            "/s",
            "id1",
        ])
        .unwrap();
        assert!(matches!(e.command, Command::Exec(ref a) if a.detach && a.tty && a.command.is_empty()));
        let k = Cli::try_parse_from(["mctl-runc", "kill", "id1", "9"]).unwrap();
        assert!(matches!(k.command, Command::Kill { ref signal, .. } if signal.as_deref() == Some("9")));
        let x = Cli::try_parse_from(["mctl-runc", "exec", "id1", "ls", "-l"]).unwrap();
        assert!(matches!(x.command, Command::Exec(ref a) if a.command == ["ls", "-l"]));
    }
}
