//! The command line, as clap structs only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::launcher::spec::ConsoleMode;

/// The version with the git revision it was built from (`0.1.0 (1a2b3c4d5e6f)`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MCTL_GIT_REVISION"), ")");

/// mctl: boot and manage machines (containers that run a full init).
#[derive(Debug, Parser)]
#[command(name = "mctl", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `args` (the program name first), exiting with clap's message on bad input.
    ///
    /// A launch (`run`, `boot`) builds only its own verb: clap's full tree of some 45 verbs
    /// costs about half a millisecond to build, a twentieth of a `mctl run`. Help and version
    /// requests take the full tree, which alone prints the descriptions.
    pub fn parse_args(args: Vec<std::ffi::OsString>) -> Cli {
        use clap::FromArgMatches;
        match launch_only_command(&args) {
            Some(cmd) => {
                let matches = cmd.get_matches_from(args);
                Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
            }
            None => Cli::parse_from(args),
        }
    }
}

/// The command line parser for `mctl run` or `mctl boot` alone, or `None` for anything else
/// (or anything that may ask for help or the version).
fn launch_only_command(args: &[std::ffi::OsString]) -> Option<clap::Command> {
    let verb = match args.get(1)?.to_str()? {
        "run" => RunArgs::augment_args(clap::Command::new("run")),
        "boot" => BootArgs::augment_args(clap::Command::new("boot")),
        _ => return None,
    };
    let may_ask_for_help = |a: &std::ffi::OsString| {
        let a = a.as_encoded_bytes();
        a == b"--help"
            || a == b"--version"
            || (a.len() > 1 && a[0] == b'-' && a[1] != b'-' && a.iter().any(|&c| c == b'h' || c == b'V'))
    };
    if args[2..].iter().any(may_ask_for_help) {
        return None;
    }
    Some(
        clap::Command::new("mctl")
            .version(VERSION)
            .propagate_version(true)
            .subcommand_required(true)
            .subcommand(verb),
    )
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot the tree's init (systemd) as PID 1 of a new machine.
    Boot(BootArgs),
    /// Run one command in a new machine, without booting.
    Run(RunArgs),
    /// List running machines.
    List(ListArgs),
    /// Show properties of machines (or of the manager, without NAME).
    Show(ShowArgs),
    /// Show the state of machines: identity, OS, addresses and processes.
    Status(NamesArgs),
    /// End every process of machines.
    Terminate(NamesArgs),
    /// Send a signal to machines' processes.
    Kill(KillArgs),
    /// Ask machines' init to power off.
    Poweroff(NamesArgs),
    /// Ask machines' init to reboot.
    Reboot(NamesArgs),
    /// Run a shell or command inside a running machine.
    Shell(ShellArgs),
    /// Log in to a running machine on a new terminal of its own (exit with ^] three times).
    Login(LoginArgs),
    /// Copy a file or directory from the host into a running machine.
    CopyTo(CopyArgs),
    /// Copy a file or directory from a running machine to the host.
    CopyFrom(CopyArgs),
    /// Bind-mount a host directory or file into a running machine.
    Bind(BindArgs),
    /// Make a new image from a running machine's filesystem (frozen while it is copied).
    Commit(CommitArgs),
    /// Change a running machine's resource limits (systemd's names: MemoryMax=1G ...).
    SetProperty(SetPropertyArgs),
    /// Show machines' resource use live, like systemd-cgtop.
    Top(TopArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(CompletionsArgs),
    /// Write man pages for mctl and every verb (mctl.1, mctl-boot.1, ...) into a directory.
    #[command(name = "man")]
    ManPages(ManPagesArgs),
    /// Freeze every process of machines (cgroup freezer).
    Freeze(NamesArgs),
    /// Thaw frozen machines.
    Thaw(NamesArgs),
    /// Start machines as systemd services (mctl@NAME.service).
    Start(NamesArgs),
    /// Stop machines' services (a clean poweroff of the guest).
    Stop(NamesArgs),
    /// Start machines at boot.
    Enable(NamesArgs),
    /// Do not start machines at boot.
    Disable(NamesArgs),
    /// List the images in the image store.
    ListImages(ListImagesArgs),
    /// Show an image's properties: path, OS, read-only, disk usage, times.
    ImageStatus(ImageStatusArgs),
    /// Copy an image (ownership, modes, xattrs, hard links and device nodes included).
    Clone(CloneArgs),
    /// Rename an image.
    Rename(RenameArgs),
    /// Remove images.
    Remove(ImageNamesArgs),
    /// Mark an image read-only (the immutable flag) or writable again.
    ReadOnly(ReadOnlyArgs),
    /// Import a tarball (plain, gzip, xz or zstd) as a new image.
    ImportTar(ImportTarArgs),
    /// Export an image as a tarball.
    ExportTar(ExportTarArgs),
    /// Download a tarball and import it as a new image.
    PullTar(PullTarArgs),
    /// Download an image from an LXC image server (lxc-create -t download's protocol).
    PullLxc(PullLxcArgs),
    /// Build a new image with a bootstrap recipe (debootstrap or mmdebstrap).
    Bootstrap(BootstrapArgs),
    /// Pull an OCI image from a registry: [docker://]REGISTRY/REPO[:TAG|@sha256:DIGEST].
    PullOci(PullOciArgs),
    /// Import an OCI image layout (directory or tar) or a docker save archive.
    ImportOci(ImportOciArgs),
    /// Export an image as an OCI image layout (a directory, or a tar if PATH ends in .tar).
    ExportOci(ExportOciArgs),
    /// Push an image to a registry as an OCI image.
    PushOci(PushOciArgs),
    /// Remove downloaded blobs no image uses from the pull cache.
    PruneCache,
    /// Write an OCI runtime bundle (config.json and rootfs) of an image.
    OciBundle(OciBundleArgs),
}

/// yes/no, also spelled true/false (podman's --tls-verify=false).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// Turn it on (`true` works too, as in podman).
    #[value(alias = "true")]
    Yes,
    /// Turn it off (`false` works too, as in podman).
    #[value(alias = "false")]
    No,
}

/// Registry options of pull-oci and push-oci.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Verify TLS certificates and refuse plain HTTP (allowed anyway for loopback registries).
    #[arg(long, value_enum, default_value = "yes", value_name = "yes|no")]
    pub tls_verify: Toggle,
    /// Read registry credentials from this file (auth.json format) instead of the usual ones.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

/// `mctl pull-oci`.
#[derive(Debug, Args)]
pub struct PullOciArgs {
    /// The image: [docker://]REGISTRY/REPO[:TAG|@sha256:DIGEST].
    pub reference: String,
    /// The new image's name (default: the repository's last component).
    pub name: Option<String>,
    /// The platform to pick from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Registry options.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Layers downloaded in parallel.
    #[arg(long, default_value = "4")]
    pub jobs: usize,
    /// Mark the new image read-only.
    #[arg(long)]
    pub read_only: bool,
}

/// `mctl import-oci`.
#[derive(Debug, Args)]
pub struct ImportOciArgs {
    /// An OCI image layout (directory or tar) or a docker save archive.
    pub path: PathBuf,
    /// The new image's name (default: from the image's name or tag, else the file name).
    pub name: Option<String>,
    /// Which image of a layout or archive with several: its ref name or tag.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// The platform to pick from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Mark the new image read-only.
    #[arg(long)]
    pub read_only: bool,
}

/// `mctl export-oci`.
#[derive(Debug, Args)]
pub struct ExportOciArgs {
    /// The image.
    pub name: String,
    /// The layout to write (must not exist): a directory, or a tar if it ends in .tar.
    pub path: PathBuf,
    /// The image's ref name in the layout.
    #[arg(long = "ref", value_name = "REF", default_value = "latest")]
    pub reference: String,
}

/// `mctl push-oci`.
#[derive(Debug, Args)]
pub struct PushOciArgs {
    /// The image.
    pub image: String,
    /// Where to: [docker://]REGISTRY/REPO[:TAG].
    pub reference: String,
    /// Registry options.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `mctl oci-bundle`.
#[derive(Debug, Args)]
pub struct OciBundleArgs {
    /// The image.
    pub name: String,
    /// The bundle directory to create (must not exist).
    pub dir: PathBuf,
}

/// `mctl list-images`.
#[derive(Debug, Args)]
pub struct ListImagesArgs {
    /// Leave out the header and footer.
    #[arg(long)]
    pub no_legend: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `mctl image-status`.
#[derive(Debug, Args)]
pub struct ImageStatusArgs {
    /// Image names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Output format: text, or one JSON object per image.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// Verbs that take image names.
#[derive(Debug, Args)]
pub struct ImageNamesArgs {
    /// Image names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `mctl clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The image to copy.
    pub source: String,
    /// The new image's name.
    pub destination: String,
    /// Make the copy read-only.
    #[arg(long)]
    pub read_only: bool,
}

/// `mctl rename`.
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The image.
    pub old: String,
    /// Its new name.
    pub new: String,
}

/// `mctl read-only`.
#[derive(Debug, Args)]
pub struct ReadOnlyArgs {
    /// The image.
    pub name: String,
    /// Read-only (yes, the default) or writable (no).
    #[arg(value_enum, default_value = "yes")]
    pub value: YesNo,
}

/// `mctl import-tar`.
#[derive(Debug, Args)]
pub struct ImportTarArgs {
    /// The tarball, or - for stdin.
    pub file: PathBuf,
    /// The new image's name (default: the file name without its extensions).
    pub name: Option<String>,
    /// Mark the new image read-only.
    #[arg(long)]
    pub read_only: bool,
}

/// Tarball formats for export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TarFormat {
    /// Plain tar.
    Tar,
    /// gzip-compressed.
    Gzip,
    /// xz-compressed.
    Xz,
    /// zstd-compressed.
    Zstd,
}

/// `mctl export-tar`.
#[derive(Debug, Args)]
pub struct ExportTarArgs {
    /// The image.
    pub name: String,
    /// The tarball to write (must not exist), or - for stdout.
    pub file: PathBuf,
    /// Compression (default: from the file's extension; plain for -).
    #[arg(long, value_enum)]
    pub format: Option<TarFormat>,
}

/// How to verify a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyMode {
    /// Against SHA256SUMS beside the file (or FILE.sha256).
    Checksum,
    /// Do not verify.
    No,
}

/// `mctl pull-tar`.
#[derive(Debug, Args)]
pub struct PullTarArgs {
    /// The tarball's URL (http or https).
    pub url: String,
    /// The new image's name (default: the file name without its extensions).
    pub name: Option<String>,
    /// Verification of the download.
    #[arg(long, value_enum, default_value = "checksum")]
    pub verify: VerifyMode,
    /// Mark the new image read-only.
    #[arg(long)]
    pub read_only: bool,
}

/// `mctl pull-lxc`.
#[derive(Debug, Args)]
pub struct PullLxcArgs {
    /// Distribution (debian, ubuntu, alpine, …).
    pub dist: String,
    /// Release (bookworm, noble, 3.20, …).
    pub release: String,
    /// The new image's name (default: DIST-RELEASE).
    pub name: Option<String>,
    /// The image server.
    #[arg(long, default_value = crate::images::lxc::DEFAULT_SERVER)]
    pub server: String,
    /// Architecture (default: the host's).
    #[arg(long)]
    pub arch: Option<String>,
    /// Image variant.
    #[arg(long, default_value = "default")]
    pub variant: String,
    /// Verification of the download.
    #[arg(long, value_enum, default_value = "checksum")]
    pub verify: VerifyMode,
}

/// `mctl bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Distribution: debian or ubuntu.
    pub distribution: String,
    /// Suite (bookworm, trixie, noble, …).
    pub suite: String,
    /// The new image's name.
    pub name: String,
    /// Package mirror (default: the distribution's).
    #[arg(long)]
    pub mirror: Option<String>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Columns (the default).
    Table,
    /// One JSON array.
    Json,
    /// Indented JSON.
    JsonPretty,
}

/// `mctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Leave out the header and footer.
    #[arg(long)]
    pub no_legend: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `mctl show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Machines (none: the manager).
    pub names: Vec<String>,
    /// Only these properties (repeatable, or comma-separated).
    #[arg(short = 'p', long = "property", value_name = "NAME")]
    pub property: Vec<String>,
    /// Print values only.
    #[arg(long)]
    pub value: bool,
    /// Also show empty properties.
    #[arg(short, long)]
    pub all: bool,
    /// Output format: NAME=VALUE lines (table), or one JSON object per machine.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `mctl completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// `mctl man`.
#[derive(Debug, Args)]
pub struct ManPagesArgs {
    /// The directory the pages go to (created if missing).
    pub dir: PathBuf,
}

/// `mctl login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The machine.
    pub name: String,
}

/// `mctl copy-to` / `mctl copy-from`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Replace the destination if it exists.
    #[arg(long)]
    pub force: bool,
    /// The machine.
    pub name: String,
    /// Where to copy from (on the host for copy-to, in the machine for copy-from).
    pub source: String,
    /// Where to copy to (default: the same path as the source).
    pub destination: Option<String>,
}

/// `mctl bind`.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// Mount it read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Create the destination (and its parents) when missing.
    #[arg(long)]
    pub mkdir: bool,
    /// The machine.
    pub name: String,
    /// The host directory or file.
    pub source: String,
    /// Where it appears in the machine (default: the same path as the source).
    pub destination: Option<String>,
}

/// Verbs that take machine names.
#[derive(Debug, Args)]
pub struct NamesArgs {
    /// Machine names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `mctl set-property`.
#[derive(Debug, Args)]
pub struct SetPropertyArgs {
    /// The running machine.
    pub name: String,
    /// NAME=VALUE assignments: MemoryMax, MemoryHigh, MemorySwapMax, TasksMax, CPUWeight,
    /// CPUQuota, AllowedCPUs, IOWeight, IO{Read,Write}{Bandwidth,IOPS}Max.
    #[arg(required = true, value_name = "NAME=VALUE")]
    pub properties: Vec<String>,
    /// Change the running machine only; without it the values are also written to the
    /// machine's settings file (/etc/mctl/NAME.mctl) for its next start.
    #[arg(long)]
    pub runtime: bool,
}

/// How `mctl top` orders machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopOrder {
    /// By CPU use (the default).
    Cpu,
    /// By memory.
    Memory,
    /// By number of tasks.
    Tasks,
    /// By block I/O.
    Io,
    /// By name.
    Name,
}

/// `mctl top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Refresh every this many seconds.
    #[arg(short = 'd', long, default_value = "1", value_name = "SECONDS")]
    pub delay: f64,
    /// Stop after this many refreshes (default: run until interrupted).
    #[arg(short = 'n', long, value_name = "N")]
    pub iterations: Option<u64>,
    /// Plain output for scripts: each refresh printed after the last, no screen control.
    #[arg(short = 'b', long)]
    pub batch: bool,
    /// The column to sort by, largest first.
    #[arg(long, value_enum, default_value = "cpu")]
    pub order: TopOrder,
    /// Output format: a table, or each refresh as one JSON array (with the raw counters).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `mctl commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The running machine.
    pub machine: String,
    /// The new image's name.
    pub image: String,
    /// Record what the machine changed since its image as one new OCI layer on top of the
    /// image's layers (the new image can then be pushed or exported as layers).
    #[arg(long)]
    pub oci: bool,
}

/// `mctl kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Machine names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Whom to signal: leader or all.
    #[arg(long, default_value = "all", value_name = "WHO")]
    pub kill_whom: String,
    /// The signal (name or number).
    #[arg(short = 's', long, default_value = "SIGTERM")]
    pub signal: String,
}

/// `mctl shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The machine, optionally with the user to be: [USER@]NAME.
    #[arg(value_name = "[USER@]NAME")]
    pub target: String,
    /// Set an environment variable: NAME=VALUE.
    #[arg(short = 'E', long, value_name = "NAME=VALUE")]
    pub setenv: Vec<String>,
    /// The command and its arguments (default: the user's login shell).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `yes` or `no`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    /// Turn it on.
    Yes,
    /// Turn it off.
    No,
}

/// Options shared by `boot` and `run` (nspawn's names where they overlap).
#[derive(Debug, Args)]
pub struct MachineArgs {
    /// Root directory of the machine.
    #[arg(short = 'D', long, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// A raw disk image (file or block device) to boot instead of a directory: a GPT with the
    /// Discoverable Partitions types (root, /usr, /home, /srv, /var, /var/tmp, ESP, XBOOTLDR),
    /// an MBR with one bootable Linux partition, or a single file system.
    #[arg(short = 'i', long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// dm-verity root hash (hex) of the image's root file system (refused where the kernel has
    /// no dm-verity).
    #[arg(long, value_name = "HEX")]
    pub root_hash: Option<String>,
    /// PKCS7 signature of the root hash: a file, or base64:DATA.
    #[arg(long, value_name = "PATH|base64:DATA")]
    pub root_hash_sig: Option<String>,
    /// The dm-verity hash data of the image's root file system, in a file of its own.
    #[arg(long, value_name = "PATH")]
    pub verity_data: Option<PathBuf>,
    /// Machine name (default: the directory's name, cleaned); without -D, boots the image of
    /// this name from the image store.
    #[arg(short = 'M', long, value_name = "NAME")]
    pub machine: Option<String>,
    /// Hostname inside the machine (default: the machine name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Machine UUID when the tree has no /etc/machine-id.
    #[arg(long)]
    pub uuid: Option<uuid::Uuid>,
    /// Bind-mount a host path: SRC[:DST[:rbind|norbind]].
    #[arg(long, value_name = "SRC[:DST[:OPTS]]")]
    pub bind: Vec<String>,
    /// Bind-mount a host path read-only.
    #[arg(long = "bind-ro", value_name = "SRC[:DST[:OPTS]]")]
    pub bind_ro: Vec<String>,
    /// Give the machine a credential: ID:VALUE (C escapes such as \n in VALUE).
    #[arg(long, value_name = "ID:VALUE")]
    pub set_credential: Vec<String>,
    /// Give the machine a credential read from a file: ID:PATH.
    #[arg(long, value_name = "ID:PATH")]
    pub load_credential: Vec<String>,
    /// Bind a host user into the machine (needs -U): its home at /run/host/home/NAME, its ids
    /// mapped onto a free id from 60514-60577, user records in /run/host/userdb for nss-systemd.
    #[arg(long, value_name = "NAME")]
    pub bind_user: Vec<String>,
    /// Make a path of the machine inaccessible: an empty node of its kind, mode 0, read-only.
    #[arg(long, value_name = "PATH")]
    pub inaccessible: Vec<PathBuf>,
    /// Mount a tmpfs: PATH[:OPTIONS].
    #[arg(long, value_name = "PATH[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// Set an environment variable for the payload: NAME=VALUE (or NAME to pass ours).
    #[arg(short = 'E', long, value_name = "NAME[=VALUE]")]
    pub setenv: Vec<String>,
    /// Working directory inside the machine.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// Run the command as this user of the machine (name or uid).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Mount the root directory read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Boot a throwaway overlay of the image: writes go to memory and vanish at exit, the image
    /// is not changed; the machine name gets a random suffix.
    #[arg(short = 'x', long)]
    pub ephemeral: bool,
    /// Make the directory NEW of the tree the machine's root, and mount the whole tree at OLD
    /// if given (NEW[:OLD], for images with several bootable trees).
    #[arg(long, value_name = "NEW[:OLD]")]
    pub pivot_root: Option<String>,
    /// An OCI runtime bundle: the root directory and settings from its config.json (no
    /// settings file is read; options given here take precedence).
    #[arg(long, value_name = "DIR")]
    pub oci_bundle: Option<PathBuf>,
    /// A tree to copy the machine's root directory from, when that does not exist yet.
    #[arg(long, value_name = "DIR")]
    pub template: Option<PathBuf>,
    /// Keep the image from being written: yes (tmpfs root, /usr from the image), state (image
    /// read-only, tmpfs /var), overlay (tmpfs overlay over the image), no.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "yes", value_name = "MODE")]
    pub volatile: Option<crate::launcher::spec::Volatile>,
    /// An overlay mount: LOWER[:LOWER...]:UPPER:DEST (empty UPPER: a throwaway tmpfs).
    #[arg(long, value_name = "LOWER:UPPER:DEST")]
    pub overlay: Vec<String>,
    /// A read-only overlay mount: LOWER[:LOWER...]:DEST.
    #[arg(long = "overlay-ro", value_name = "LOWER:DEST")]
    pub overlay_ro: Vec<String>,
    /// A user namespace: no, yes (the range follows the owner of the root directory), pick (a
    /// free range of 65536 ids, the image's previous one when free), identity, or UID[:COUNT].
    /// The machine's root then has no privilege on the host.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "yes")]
    pub private_users: Option<crate::userns::PrivateUsers>,
    /// Same as --private-users=pick.
    #[arg(short = 'U')]
    pub private_users_pick: bool,
    /// How the image's files appear owned inside a user namespace: map (an idmapped mount, the
    /// tree on disk unchanged), chown, off, or auto (map where the file system can).
    #[arg(long, value_enum, value_name = "MODE")]
    pub private_users_ownership: Option<crate::userns::Ownership>,
    /// Capabilities to grant on top of the defaults (comma-separated, or "all").
    #[arg(long, value_name = "CAPS")]
    pub capability: Vec<String>,
    /// Capabilities to take away from the defaults.
    #[arg(long = "drop-capability", value_name = "CAPS")]
    pub drop_capability: Vec<String>,
    /// Capabilities the command keeps in its ambient set (also as another --user); not with boot.
    #[arg(long = "ambient-capability", value_name = "CAPS")]
    pub ambient_capability: Vec<String>,
    /// A resource limit of the payload: LIMIT=SOFT[:HARD] (RLIMIT_NOFILE=1024:4096, AS=1G, ...).
    #[arg(long, value_name = "LIMIT=SOFT[:HARD]")]
    pub rlimit: Vec<String>,
    /// The payload's OOM score adjustment (-1000..1000).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub oom_score_adjust: Option<String>,
    /// The CPUs the payload may run on: 0,2-3.
    #[arg(long, value_name = "CPUS")]
    pub cpu_affinity: Option<String>,
    /// The architecture the machine reports: the host's, or its 32-bit one (x86 on x86-64).
    #[arg(long, value_name = "ARCH")]
    pub personality: Option<String>,
    /// Turn off syncing to disk for the payload (sync, fsync, ... do nothing; O_SYNC opens fail).
    #[arg(long, value_enum, value_name = "BOOL")]
    pub suppress_sync: Option<Toggle>,
    /// The machine's /etc/resolv.conf: off, copy-|replace-|bind-host|static|uplink|stub, delete
    /// or auto (the default: nothing with a network of its own, else the host's copied in, or
    /// bound into a read-only image); `help` lists them.
    #[arg(long, value_name = "MODE")]
    pub resolv_conf: Option<String>,
    /// The machine's /etc/localtime: off, copy, bind, symlink, delete or auto (the default: a
    /// link to the image's file of the host's zone, else a copy; a bind into a read-only image).
    #[arg(long, value_name = "MODE")]
    pub timezone: Option<String>,
    /// Link the machine's journal to the host's: no, host, try-host, guest, try-guest or auto
    /// (the default: the host's /var/log/journal/MACHINE-ID bound in, if it exists).
    #[arg(long, value_name = "MODE")]
    pub link_journal: Option<String>,
    /// Same as --link-journal=try-guest.
    #[arg(short = 'j')]
    pub j: bool,
    /// Accepted for nspawn's command lines: mctl never pages.
    #[arg(long)]
    pub no_pager: bool,
    /// System calls (or @groups) to allow in addition to the default filter; a list starting
    /// with '~' names calls to deny instead. Space-separated; may be given several times.
    #[arg(long = "system-call-filter", value_name = "LIST", allow_hyphen_values = true)]
    pub system_call_filter: Vec<String>,
    /// Signal sent to PID 1 when mctl gets SIGTERM or SIGINT (a second one kills it). Default:
    /// SIGRTMIN+3 for boot (systemd's halt request), SIGKILL for run, as nspawn: a command is
    /// PID 1 and ignores signals it has no handler for, so stopping mctl must stop it. Give
    /// --kill-signal=SIGTERM to let a command shut down by itself.
    #[arg(long, value_name = "SIGNAL")]
    pub kill_signal: Option<String>,
    /// Stay in the caller's cgroup (a service unit's) and exit 133 when the machine reboots.
    #[arg(long)]
    pub keep_unit: bool,
    /// Put the machine in this slice as machine-NAME.scope (a scope systemd makes on systemd
    /// hosts; elsewhere the same cgroup layout, from the hierarchy's root) instead of below
    /// mctl's own cgroup. No effect with --keep-unit.
    #[arg(short = 'S', long, value_name = "SLICE")]
    pub slice: Option<String>,
    /// Print fewer messages.
    #[arg(short, long)]
    pub quiet: bool,
    /// Console: interactive, read-only, passive or pipe (default: interactive on a terminal).
    #[arg(long, value_enum)]
    pub console: Option<ConsoleMode>,
    /// Same as --console=pipe.
    #[arg(short = 'P', long)]
    pub pipe: bool,
    /// A network namespace of its own with only loopback.
    #[arg(long)]
    pub private_network: bool,
    /// A veth pair: ve-NAME on the host, host0 in the machine, with addresses from the pool.
    #[arg(short = 'n', long)]
    pub network_veth: bool,
    /// A veth pair whose host side (vb-NAME) joins the existing bridge BR.
    #[arg(long, value_name = "BR")]
    pub network_bridge: Option<String>,
    /// A veth pair on the bridge vz-ZONE, made on first use and removed with its last machine.
    #[arg(long, value_name = "ZONE")]
    pub network_zone: Option<String>,
    /// Move a host network interface into the machine (given back when it ends).
    #[arg(long, value_name = "IF")]
    pub network_interface: Vec<String>,
    /// Give the machine a macvlan of a host interface, mv-IF (bridge mode).
    #[arg(long, value_name = "IF")]
    pub network_macvlan: Vec<String>,
    /// Give the machine an ipvlan of a host interface, iv-IF (L2 mode).
    #[arg(long, value_name = "IF")]
    pub network_ipvlan: Vec<String>,
    /// An extra veth pair, HOSTIF on the host and MACHINEIF (default: HOSTIF) in the machine,
    /// neither end configured (removed when the machine ends).
    #[arg(long, value_name = "HOSTIF[:MACHINEIF]")]
    pub network_veth_extra: Vec<String>,
    /// Join an existing network namespace.
    #[arg(long, value_name = "PATH")]
    pub network_namespace_path: Option<PathBuf>,
    /// The machine's IPv4 address (CIDR) instead of one from the pool.
    #[arg(long, value_name = "CIDR")]
    pub address: Option<String>,
    /// The machine's default gateway (with --address).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// Forward a host port to the machine: [tcp:|udp:]HOSTPORT[:GUESTPORT] (also from localhost).
    #[arg(short = 'p', long = "port", value_name = "SPEC")]
    pub port: Vec<String>,
    /// The private pool machine addresses come from (default 10.213.0.0/16, or $MCTL_ADDRESS_POOL).
    #[arg(long, value_name = "CIDR", env = "MCTL_ADDRESS_POOL")]
    pub address_pool: Option<String>,
    /// Register the machine with mctld: auto (when one answers), yes (or fail), no.
    #[arg(long, value_enum, default_value = "auto")]
    pub register: crate::launcher::register::RegisterMode,
    /// Report readiness upwards only when the machine's init does (boot).
    #[arg(long, value_enum, default_value = "yes")]
    pub notify_ready: YesNo,
    /// Set the no_new_privs flag on the payload: nothing it executes gains privileges
    /// (setuid/setgid bits and file capabilities are ignored). Breaks sudo, su and ping.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "yes", value_name = "BOOL")]
    pub no_new_privileges: Option<YesNo>,
    /// A resource limit on the machine's cgroup, with systemd's names and units:
    /// MemoryMax=512M, MemoryHigh=, MemorySwapMax=, TasksMax=100, CPUWeight=50, CPUQuota=150%,
    /// AllowedCPUs=0-1, IOWeight=, IOReadBandwidthMax="/dev/sda 10M" (and IOWrite..., ...IOPSMax).
    #[arg(long, value_name = "NAME=VALUE")]
    pub property: Vec<String>,
    /// Read the machine's settings file (NAME.mctl in /etc/mctl, /run/mctl, or beside the
    /// image): yes, no, trusted (a file beside the image may grant privileges too) or override
    /// (the file's settings win over the command line's).
    #[arg(long, value_enum, value_name = "MODE")]
    pub settings: Option<super::settings::SettingsMode>,
}

/// `mctl boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Machine options.
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Extra arguments for init.
    #[arg(last = true)]
    pub init_args: Vec<String>,
}

/// `mctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Machine options.
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Run a minimal reaper as PID 1 and the command as PID 2.
    #[arg(short = 'a', long)]
    pub as_pid2: bool,
    /// The command and its arguments (default, for an OCI image given with -M: its
    /// entrypoint and command, with its environment, working directory and user).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(args: &[&str]) -> (String, String) {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let full = format!("{:?}", Cli::try_parse_from(&args).map_err(|e| e.render().to_string()));
        let fast = launch_only_command(&args).expect("a launch verb");
        let fast = format!(
            "{:?}",
            fast.try_get_matches_from(&args)
                .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m))
                .map_err(|e| e.render().to_string())
        );
        (full, fast)
    }

    #[test]
    fn a_launch_parses_alike_through_its_own_verb_and_the_full_tree() {
        for args in [
            &["mctl", "run", "-D", "/t", "/bin/true"][..],
            &["mctl", "run", "-q", "-D", "/t", "--", "/bin/sh", "-c", "exit 3"],
            &["mctl", "run", "-D", "/t", "--network-veth", "-p", "tcp:80:8080", "-a", "sleep", "1"],
            &["mctl", "run", "-D", "/t", "--private-users=pick", "--bind-ro=/a:/b", "/bin/ls", "-l", "-q"],
            &["mctl", "boot", "-D", "/t", "-M", "m1", "--console=passive"],
            &["mctl", "boot", "-D", "/t", "--", "--unit=rescue.target"],
            &["mctl", "boot", "-D", "/t", "-U", "--register=no", "--kill-signal=SIGRTMIN+3"],
            // Bad input fails the same way.
            &["mctl", "run", "-D"],
            &["mctl", "boot", "--no-such-option"],
            &["mctl", "run", "--console=bogus", "-D", "/t"],
            &["mctl", "boot", "-D", "/t", "stray"],
        ] {
            let (full, fast) = both(args);
            assert_eq!(full, fast, "{args:?}");
        }
    }

    #[test]
    fn help_and_version_take_the_full_tree() {
        for args in [
            &["mctl", "run", "--help"][..],
            &["mctl", "boot", "-h"],
            &["mctl", "run", "-qh"],
            &["mctl", "run", "--version"],
            &["mctl", "boot", "-V"],
            &["mctl", "list"],
            &["mctl"],
        ] {
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            assert!(launch_only_command(&args).is_none(), "{args:?}");
        }
    }
}
