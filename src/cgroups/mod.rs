//! The machine's cgroup, on pure cgroup v2 hosts and on hybrid ones (v1 controllers, a named
//! `systemd` hierarchy and cgroup2 at `unified`).
//!
//! Every machine gets `<own>/<parent>/<name>` in each hierarchy, where `<own>` is the
//! launcher's current cgroup there, so machines nest under whoever runs the launcher and mctl
//! never writes to cgroups it did not create. The shared `<parent>` (`mctl`) goes again when
//! empty, except at a hierarchy's root, where it stays once made, as Docker's `docker` cgroup
//! does: making and removing it in every hierarchy cost each launch about 0.4 ms (cgroup
//! creation allocates per-CPU state for every controller). The payload lives in
//! `<machine>/payload`; the guest gets a cgroup namespace rooted there and sees a plain cgroup2
//! tree (what systemd boots most cleanly with on either kind of host). With `--keep-unit` the launcher's own
//! cgroup (a service unit's delegated cgroup) is the machine cgroup, and the launcher moves
//! itself to `<own>/supervisor` because cgroup v2 allows no processes in inner nodes.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys::linux::read_kernel_file;

pub mod devices;
pub mod resources;
pub mod slice;
pub mod tree;

pub use slice::Slice;

/// Where cgroups are and where machines go; paths are parameters so tests can redirect them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// Where cgroup filesystems are mounted (`/sys/fs/cgroup`).
    pub fs_root: PathBuf,
    /// The mount table to read (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// The launcher's own cgroup membership (`/proc/self/cgroup`).
    pub self_cgroup: PathBuf,
    /// Directory under the launcher's cgroup that holds machines.
    pub parent: String,
    /// `-S/--slice`: the machine goes to `<slice>/machine-NAME.scope` from each hierarchy's
    /// root instead of below the launcher's cgroup (not with `--keep-unit`).
    pub slice: Option<Slice>,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            fs_root: "/sys/fs/cgroup".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            self_cgroup: "/proc/self/cgroup".into(),
            parent: "mctl".into(),
            slice: None,
        }
    }
}

/// A cgroup step that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A filesystem operation on a cgroup path failed.
    #[error("cgroup: cannot {step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The cgroup path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The host has no cgroup2 hierarchy.
    #[error("cgroup: no cgroup2 hierarchy under {0}; mctl needs cgroup v2 (unified or hybrid)")]
    NoUnified(PathBuf),
    /// The launcher's cgroup membership could not be read.
    #[error("cgroup: cannot find this process's cgroup for the hierarchy at {0}")]
    UnknownOwnCgroup(PathBuf),
    /// The device policy could not be put in place.
    #[error(
        "cgroup: cannot attach the device policy to {path}: {source} (mctl will not start a machine \
         that could open every device of the host)"
    )]
    DevicePolicy {
        /// The machine's cgroup2 directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another machine of this name is running.
    #[error("a machine named '{name}' is already running (its cgroup {path} has processes)")]
    Busy {
        /// Machine name.
        name: String,
        /// The busy cgroup.
        path: PathBuf,
    },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { step, path: path.to_owned(), source }
}

/// One mounted hierarchy and this process's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point, e.g. `/sys/fs/cgroup/unified`.
    pub mount: PathBuf,
    /// cgroup2 (true) or a v1 hierarchy.
    pub v2: bool,
    /// v1 controllers (or `name=...`) mounted there; empty for v2.
    pub controllers: Vec<String>,
    /// This process's cgroup in it, relative to the mount (`/` or `/a/b`).
    pub own: String,
}

impl Hierarchy {
    pub(crate) fn own_dir(&self) -> PathBuf {
        self.mount.join(self.own.trim_start_matches('/'))
    }

    pub(crate) fn is(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Finds the cgroup hierarchies mounted under `fs_root` and this process's place in each.
pub fn detect(cfg: &CgroupConfig) -> Result<Vec<Hierarchy>, CgroupError> {
    let mountinfo = read_kernel_file(&cfg.mountinfo).map_err(io_err("read", &cfg.mountinfo))?;
    let membership = read_kernel_file(&cfg.self_cgroup).map_err(io_err("read", &cfg.self_cgroup))?;
    parse_hierarchies(&mountinfo, &membership, &cfg.fs_root)
}

/// Makes this process's cgroup hierarchies visible under `cfg.fs_root` when its mount namespace
/// has none there (`ip netns exec` mounts a fresh `/sys` without `/sys/fs/cgroup`): moves the
/// process into a mount namespace of its own (never changing the caller's), then mounts the
/// hierarchies `/proc/self/cgroup` names, laid out as on the host (cgroup2 alone, or a tmpfs
/// with the v1 hierarchies and cgroup2 at `unified`). Returns whether it mounted anything.
/// Call while single-threaded (unshare of a mount namespace needs that).
pub fn mount_if_missing(cfg: &CgroupConfig) -> Result<bool, CgroupError> {
    use nix::mount::{MsFlags, mount};
    // The usual case, cgroup2 where hosts mount it, without reading the mount table (which the
    // launch reads once more right after).
    // f_type's and the constant's integer types differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    let cgroup2 =
        |p: &Path| rustix::fs::statfs(p).is_ok_and(|s| s.f_type as i64 == libc::CGROUP2_SUPER_MAGIC as i64);
    if cgroup2(&cfg.fs_root) || cgroup2(&cfg.fs_root.join("unified")) {
        return Ok(false);
    }
    match detect(cfg) {
        Err(CgroupError::NoUnified(_)) => {}
        _ => return Ok(false),
    }
    let membership = read_kernel_file(&cfg.self_cgroup).map_err(io_err("read", &cfg.self_cgroup))?;
    let v1: Vec<&str> =
        membership.lines().filter_map(|l| l.split(':').nth(1)).filter(|ctl| !ctl.is_empty()).collect();
    let root = &cfg.fs_root;
    let mnt = |step: &'static str, path: &Path| {
        let path = path.to_owned();
        move |e: nix::Error| CgroupError::Io { step, path, source: e.into() }
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(mnt("create a mount namespace for", root))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(mnt("make / a slave mount for", root))?;
    if v1.is_empty() {
        mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(mnt("mount cgroup2 on", root))?;
        return Ok(true);
    }
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(mnt("mount a tmpfs on", root))?;
    for ctl in v1 {
        let dir = root.join(ctl.strip_prefix("name=").unwrap_or(ctl));
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let opts = if ctl.starts_with("name=") { format!("none,{ctl}") } else { ctl.to_owned() };
        mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(opts.as_str()),
        )
        .map_err(mnt("mount a v1 cgroup hierarchy on", &dir))?;
    }
    let unified = root.join("unified");
    fs::create_dir_all(&unified).map_err(io_err("create", &unified))?;
    mount(
        Some("cgroup2"),
        &unified,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(mnt("mount cgroup2 on", &unified))?;
    Ok(true)
}

fn parse_hierarchies(
    mountinfo: &str,
    membership: &str,
    fs_root: &Path,
) -> Result<Vec<Hierarchy>, CgroupError> {
    // /proc/self/cgroup lines: "ID:controllers:path"; the v2 line has empty controllers.
    let own: Vec<(Vec<&str>, &str)> = membership
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
            Some((ctl.split(',').filter(|c| !c.is_empty()).collect(), path))
        })
        .collect();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype), Some(superopts)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        let mount = PathBuf::from(crate::procfs::unescape_mountinfo(mount));
        // A later mount on or above an earlier one hides it (cgroup2 mounted over a hybrid
        // /sys/fs/cgroup, a fresh /sys): only what is visible counts.
        out.retain(|h: &Hierarchy| !h.mount.starts_with(&mount));
        if !mount.starts_with(fs_root) {
            continue;
        }
        let (v2, controllers) = match *fstype {
            "cgroup2" => (true, Vec::new()),
            "cgroup" => {
                let opts: Vec<String> = superopts.split(',').map(str::to_owned).collect();
                (false, opts)
            }
            _ => continue,
        };
        let own_path = own.iter().find(|(ctl, _)| {
            if v2 {
                ctl.is_empty()
            } else {
                !ctl.is_empty() && ctl.iter().all(|c| controllers.iter().any(|o| o == c))
            }
        });
        let Some((ctl, path)) = own_path else {
            return Err(CgroupError::UnknownOwnCgroup(mount));
        };
        out.push(Hierarchy {
            mount,
            v2,
            controllers: ctl.iter().map(|c| (*c).to_owned()).collect(),
            // A process that entered a cgroup namespace without joining a cgroup inside it (e.g.
            // nsenter) sees its own cgroup as "/../.."; it acts from the namespace's root.
            own: if path.split('/').any(|c| c == "..") { "/".to_owned() } else { (*path).to_owned() },
        });
    }
    if !out.iter().any(|h| h.v2) {
        return Err(CgroupError::NoUnified(fs_root.to_owned()));
    }
    // The v2 hierarchy first: it is the one the guest sees and the one we report.
    out.sort_by_key(|h| !h.v2);
    Ok(out)
}

/// A cgroup file named by its hierarchy's mount point and its path below it: the launcher's
/// outer child opens the mount point while it still sees the host's file system and reaches
/// the file (which its parent may make only meanwhile) through it afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFile {
    /// The hierarchy's mount point.
    pub mount: PathBuf,
    /// The file, relative to it.
    pub relative: PathBuf,
}

impl CgroupFile {
    fn of(h: &Hierarchy, dir: &Path, file: &str) -> CgroupFile {
        let relative = dir.strip_prefix(&h.mount).unwrap_or(dir).join(file);
        CgroupFile { mount: h.mount.clone(), relative }
    }
}

/// A machine's cgroup in every hierarchy, removed again by [`MachineCgroup::remove`].
#[derive(Debug)]
pub struct MachineCgroup {
    name: String,
    parts: Vec<Part>,
    keep_unit: bool,
    /// The device program attached to the machine's cgroup2 directory, detached again at
    /// removal when that directory outlives the machine (the unit's, with `--keep-unit`).
    device_program: Option<OwnedFd>,
}

#[derive(Debug)]
struct Part {
    hierarchy: Hierarchy,
    /// The machine's cgroup (the launcher's own with --keep-unit).
    machine: PathBuf,
    /// The parent directories we may have created, deepest first: `mctl`, or a slice's (none
    /// with --keep-unit).
    parents: Vec<PathBuf>,
    /// Whether the parents go again when empty (a slice's do; `mctl` stays at a root).
    remove_parents: bool,
}

impl Part {
    fn payload(&self) -> PathBuf {
        self.machine.join("payload")
    }
}

impl MachineCgroup {
    /// Creates the machine's cgroup in the cgroup2 hierarchy (after removing a stale empty one
    /// left by a launcher that was killed) and, with `keep_unit`, moves the launcher into
    /// `supervisor`. The v1 hierarchies of a hybrid host follow with
    /// [`create_v1`](Self::create_v1), which the launcher runs while its child builds the
    /// machine's file system.
    pub fn create_unified(cfg: &CgroupConfig, name: &str, keep_unit: bool) -> Result<Self, CgroupError> {
        let hierarchies = detect(cfg)?;
        // A launcher in the root cgroup has no unit whose cgroup it could keep: writing
        // "supervisor" and "payload" there would change the host's own cgroup root.
        let keep_unit = keep_unit && hierarchies.iter().any(|h| h.v2 && h.own != "/");
        let mut me = Self { name: name.to_owned(), parts: Vec::new(), keep_unit, device_program: None };
        for h in hierarchies {
            let own = h.own_dir();
            let (machine, parents, remove_parents) = if keep_unit {
                (own, Vec::new(), false)
            } else if let Some(slice) = &cfg.slice {
                let mut dir = h.mount.clone();
                let mut parents = Vec::new();
                for c in slice.path().components() {
                    dir.push(c);
                    parents.push(dir.clone());
                }
                parents.reverse();
                (dir.join(Slice::scope_of(name)), parents, true)
            } else {
                let parent = own.join(&cfg.parent);
                // Only at a hierarchy's root: below the cgroup of whoever runs the launcher (a
                // session, a service, a CI job) an empty directory left behind would keep its
                // owner from removing that cgroup.
                let remove_parents = h.own != "/";
                (parent.join(name), vec![parent], remove_parents)
            };
            me.parts.push(Part { hierarchy: h, machine, parents, remove_parents });
        }
        if let Err(e) = me.build(|p| p.hierarchy.v2).and_then(|()| me.attach_device_program()) {
            me.remove_quietly();
            return Err(e);
        }
        Ok(me)
    }

    /// Creates the machine's cgroups in the v1 hierarchies (none on a pure cgroup v2 host).
    /// On error what was made is removed (the cgroup2 part too, when this value is dropped).
    pub fn create_v1(&mut self) -> Result<(), CgroupError> {
        let built = self.build(|p| !p.hierarchy.v2);
        if built.is_err() {
            self.remove_quietly();
        }
        built
    }

    fn build(&self, which: impl Fn(&Part) -> bool) -> Result<(), CgroupError> {
        for part in self.parts.iter().filter(|p| which(p)) {
            let payload = part.payload();
            // A machine cgroup that exists already is a killed launcher's leftover (removed
            // when empty) or a running machine's of the same name.
            if !make_dirs(&part.hierarchy, &part.machine)? && !self.keep_unit {
                if has_processes(&part.machine) {
                    return Err(CgroupError::Busy { name: self.name.clone(), path: part.machine.clone() });
                }
                remove_tree(&part.machine, Duration::ZERO)?;
                make_dirs(&part.hierarchy, &part.machine)?;
            } else if self.keep_unit && payload.exists() {
                if has_processes(&payload) {
                    return Err(CgroupError::Busy { name: self.name.clone(), path: payload });
                }
                remove_tree(&payload, Duration::ZERO)?;
            }
            if part.hierarchy.is("devices") {
                // Before the machine cgroup has children: v1 refuses a new default-deny then.
                restrict_v1_devices(&part.machine, self.keep_unit)?;
            }
            if self.keep_unit {
                let supervisor = part.machine.join("supervisor");
                make_dirs_below(&part.hierarchy, &supervisor, &part.machine)?;
                write(&supervisor.join("cgroup.procs"), &std::process::id().to_string())?;
            }
            make_dirs_below(&part.hierarchy, &payload, &part.machine)?;
            if part.hierarchy.v2 {
                // From the topmost directory we may have made: the ones above are not ours.
                let from = part.parents.last().unwrap_or(&part.machine);
                enable_controllers(from, &part.machine)?;
            }
            if part.hierarchy.is("devices") && self.keep_unit {
                // A new v1 devices cgroup starts with its parent's list: only a unit's cgroup,
                // which may keep its service manager's, leaves the payload to restrict.
                restrict_v1_devices(&payload, false)?;
            }
        }
        Ok(())
    }

    /// The device program on the machine's cgroup2 directory, above the guest's cgroup root.
    /// On a hybrid host the v1 devices controller holds the same list already (as systemd
    /// enforces device policies there), and loading a program would cost every launch the
    /// verifier's and the JIT's time.
    fn attach_device_program(&mut self) -> Result<(), CgroupError> {
        if self.parts.iter().any(|p| p.hierarchy.is("devices")) {
            return Ok(());
        }
        let dir = self.parts[0].machine.clone();
        let attached = (|| {
            let prog = crate::sys::linux::bpf_load_device_program(
                &devices::program(&devices::MACHINE_DEVICES)?,
                "mctl_devices",
            )?;
            let cg = fs::File::open(&dir)?;
            crate::sys::linux::bpf_attach_device_program(prog.as_fd(), cg.as_fd())?;
            Ok::<_, io::Error>(prog)
        })();
        match attached {
            Ok(prog) => {
                self.device_program = Some(prog);
                Ok(())
            }
            // Inside another machine, whose filter (or user namespace: only the host's root may
            // load device programs) keeps `bpf` from us: its device policy already holds for
            // everything below it, this machine included.
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    && (runs_under_seccomp() || crate::procfs::in_user_namespace()) =>
            {
                tracing::debug!("no device program of our own ({e}); the enclosing sandbox's applies");
                Ok(())
            }
            Err(source) => Err(CgroupError::DevicePolicy { path: dir, source }),
        }
    }

    /// The payload's v1 `tasks` files. Writing `0` there moves the writing thread without the
    /// kernel's global threadgroup lock (whose first taker waits a whole RCU grace period,
    /// about 10 ms); for a single-threaded process that moves the process.
    pub fn payload_v1_tasks(&self) -> Vec<CgroupFile> {
        self.parts
            .iter()
            .filter(|p| !p.hierarchy.v2)
            .map(|p| CgroupFile::of(&p.hierarchy, &p.payload(), "tasks"))
            .collect()
    }

    /// Sends SIGKILL to every process of the guest (its cgroup2 `cgroup.kill`; one by one
    /// before Linux 5.14), then thaws what it froze in the v1 freezer hierarchy (see
    /// [`thaw_v1_freezer`]). Returns how many of its cgroups were frozen: while one is, a guest
    /// task not yet dead may have frozen it again, so the caller repeats this until the guest
    /// is gone. Killing every task, not only PID 1, is what lets a repetition win.
    pub fn kill_guest(&self) -> usize {
        kill_all(&self.parts[0].payload());
        self.parts.iter().filter(|p| p.hierarchy.is("freezer")).map(|p| thaw_v1_freezer(&p.payload())).sum()
    }

    /// The payload's cgroup2 `cgroup.procs` file.
    pub fn unified_payload_procs(&self) -> CgroupFile {
        CgroupFile::of(&self.parts[0].hierarchy, &self.parts[0].payload(), "cgroup.procs")
    }

    /// Delegates the payload's cgroup2 directory to the machine's root (host ids `uid`/`gid`) in
    /// a user namespace, as systemd delegates to a user: the directory and the files that
    /// create, populate and enable controllers below it. The guest sees no v1 hierarchy.
    pub fn delegate_payload(&self, uid: u32, gid: u32) -> Result<(), CgroupError> {
        let dir = self.unified_payload_dir();
        for name in [".", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
            let path = dir.join(name);
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|source| CgroupError::Io {
                step: "delegate",
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// The payload's cgroup2 directory (for `fork_into_cgroup`).
    pub fn unified_payload_dir(&self) -> PathBuf {
        self.parts[0].payload()
    }

    /// What [`MachineCgroup::remove`] would remove, for the launch record: the machine's
    /// cgroups (the payload's with `--keep-unit`) and their shared parents.
    pub fn owned_dirs(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let dirs =
            self.parts.iter().map(|p| if self.keep_unit { p.payload() } else { p.machine.clone() }).collect();
        let parents =
            self.parts.iter().filter(|p| p.remove_parents).flat_map(|p| p.parents.iter().cloned()).collect();
        (dirs, parents)
    }

    /// The machine's cgroup in every hierarchy, where its limits go.
    pub fn dirs(&self) -> resources::MachineDirs {
        resources::MachineDirs {
            unified: self.parts[0].machine.clone(),
            v1: self
                .parts
                .iter()
                .filter(|p| !p.hierarchy.v2)
                .map(|p| (p.hierarchy.controllers.clone(), p.machine.clone()))
                .collect(),
            unit: if self.keep_unit {
                self.parts[0].machine.file_name().map(|n| n.to_string_lossy().into_owned())
            } else {
                None
            },
        }
    }

    /// The machine's cgroup in the cgroup2 hierarchy.
    pub fn unified_dir(&self) -> &Path {
        &self.parts[0].machine
    }

    /// The payload's path in the cgroup2 hierarchy relative to its mount (as `/proc/PID/cgroup`
    /// shows it on the host).
    pub fn unified_payload_path(&self) -> String {
        let p = &self.parts[0];
        format!("/{}", p.payload().strip_prefix(&p.hierarchy.mount).unwrap_or(Path::new("")).display())
    }

    /// Removes the machine's cgroups (the payload's only, with `--keep-unit`), waiting briefly
    /// for dying processes to leave and killing stragglers.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        let result = self.remove_all(Duration::from_secs(3));
        self.parts.clear();
        result
    }

    fn remove_all(&self, patience: Duration) -> Result<(), CgroupError> {
        let mut first_err = None;
        if self.keep_unit
            && let Some(prog) = &self.device_program
            && let Ok(cg) = fs::File::open(&self.parts[0].machine)
        {
            // The unit's cgroup stays; the program goes with the machine.
            let _ = crate::sys::linux::bpf_detach_device_program(prog.as_fd(), cg.as_fd());
        }
        for part in &self.parts {
            // The payload first: the machine's cgroup is busy until its child cgroup is gone,
            // and finding that out costs a failed rmdir and a listing of its files.
            let mut targets = vec![part.payload()];
            if !self.keep_unit {
                targets.push(part.machine.clone());
            }
            if let Some(e) = targets.iter().find_map(|t| remove_tree(t, patience).err()) {
                first_err.get_or_insert(e);
            }
            for parent in part.parents.iter().filter(|_| part.remove_parents) {
                // Shared with other machines: only goes when empty.
                if fs::remove_dir(parent).is_err() {
                    break;
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn remove_quietly(&mut self) {
        let _ = self.remove_all(Duration::from_millis(500));
        self.parts.clear();
    }
}

impl Drop for MachineCgroup {
    fn drop(&mut self) {
        if !self.parts.is_empty() {
            self.remove_quietly();
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

/// `mkdir -p` that also gives new v1 cpuset cgroups their parent's CPUs and memory nodes
/// (a cpuset cgroup without them accepts no processes).
///
/// A shared parent (a slice's directories; `mctl` of earlier versions and an administrator's
/// `rmdir`) can be removed by whoever leaves it empty, possibly between our creating it and
/// using it: a step that finds a directory gone starts over.
pub(crate) fn make_dirs(h: &Hierarchy, dir: &Path) -> Result<bool, CgroupError> {
    make_dirs_below(h, dir, &h.own_dir())
}

/// [`make_dirs`] where `filled` (an ancestor of `dir`: the launcher's own cgroup, or one
/// this launch made and filled just before) has its CPUs and memory nodes: the cpuset pass
/// starts there.
fn make_dirs_below(h: &Hierarchy, dir: &Path, filled: &Path) -> Result<bool, CgroupError> {
    let mut attempts = 0;
    loop {
        match make_dirs_once(h, dir, filled) {
            Err(CgroupError::Io { source, .. }) if source.kind() == ErrorKind::NotFound && attempts < 20 => {
                attempts += 1;
            }
            other => return other,
        }
    }
}

fn make_dirs_once(h: &Hierarchy, dir: &Path, filled: &Path) -> Result<bool, CgroupError> {
    let created = mkdir_p(dir)?;
    if h.is("cpuset") {
        // Every directory from `filled` (the launcher's own cgroup has a process, so CPUs and
        // memory nodes) down, not only the ones we made: another launcher may have made the
        // shared parent an instant ago and not filled it in yet.
        let top = if dir.starts_with(filled) { filled.to_owned() } else { h.mount.clone() };
        let rel = dir.strip_prefix(&top).unwrap_or(Path::new(""));
        let mut cur = top;
        let read = |path: PathBuf| -> Result<String, CgroupError> {
            let v = read_kernel_file(&path).map_err(io_err("read", &path))?;
            Ok(v.trim().to_owned())
        };
        let mut inherited = [read(cur.join("cpuset.cpus"))?, read(cur.join("cpuset.mems"))?];
        for c in rel.components() {
            cur.push(c);
            for (f, value) in ["cpuset.cpus", "cpuset.mems"].into_iter().zip(inherited.iter_mut()) {
                let now = read(cur.join(f))?;
                if now.is_empty() {
                    write(&cur.join(f), value)?;
                } else {
                    *value = now;
                }
            }
        }
    }
    Ok(created)
}

/// Creates `dir` and any missing parents, trying the directory itself first: on cgroup file
/// systems every lookup is a kernfs walk, and usually only the last component is missing.
/// Returns whether `dir` itself was made now (false: it existed).
fn mkdir_p(dir: &Path) -> Result<bool, CgroupError> {
    let made = match (fs::create_dir(dir), dir.parent()) {
        (Err(e), Some(parent)) if e.kind() == ErrorKind::NotFound => {
            mkdir_p(parent)?;
            fs::create_dir(dir)
        }
        (first, _) => first,
    };
    match made {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

/// Enables every available controller in `subtree_control` of `from` and its descendants down
/// to `to` (directories mctl owns), so the guest can manage them.
pub(crate) fn enable_controllers(from: &Path, to: &Path) -> Result<(), CgroupError> {
    let mut dirs = vec![to.to_owned()];
    let mut cur = to;
    while cur != from {
        match cur.parent() {
            Some(p) => {
                dirs.push(p.to_owned());
                cur = p;
            }
            None => break,
        }
    }
    for dir in dirs.iter().rev() {
        let available = read_kernel_file(dir.join("cgroup.controllers")).unwrap_or_default();
        let control = dir.join("cgroup.subtree_control");
        let enabled = read_kernel_file(&control).unwrap_or_default();
        let missing: Vec<&str> =
            available.split_whitespace().filter(|c| !enabled.split_whitespace().any(|e| e == *c)).collect();
        if missing.is_empty() {
            continue;
        }
        let all: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        if fs::write(&control, all.join(" ")).is_err() {
            for c in &all {
                // A controller can be unavailable for enabling (e.g. threaded-only): not fatal.
                let _ = fs::write(&control, c);
            }
        }
    }
    Ok(())
}

/// Puts the machine's device list on a v1 `devices` cgroup. With `unless_restricted`, a cgroup
/// that already has a list (a unit's, under its service manager's device policy) keeps it.
fn restrict_v1_devices(dir: &Path, unless_restricted: bool) -> Result<(), CgroupError> {
    if unless_restricted {
        let list = dir.join("devices.list");
        let current = read_kernel_file(&list).map_err(io_err("read", &list))?;
        if current.trim() != "a *:* rwm" {
            return Ok(());
        }
    }
    write(&dir.join("devices.deny"), "a")?;
    // One rule per write(2), through one open file.
    let allow = dir.join("devices.allow");
    let mut file = fs::OpenOptions::new().write(true).open(&allow).map_err(io_err("open", &allow))?;
    for rule in &devices::MACHINE_DEVICES {
        io::Write::write_all(&mut file, rule.v1_line().as_bytes()).map_err(io_err("write", &allow))?;
    }
    Ok(())
}

/// Whether this process runs under a seccomp filter (inside another machine, typically).
fn runs_under_seccomp() -> bool {
    read_kernel_file("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|v| v.trim() != "0"))
        .unwrap_or(false)
}

/// A cgroup2 directory a process entering a machine runs in (`mctl shell`): below the
/// machine's cgroup, so its processes count as the machine's, and removed again when dropped
/// (once its processes are gone).
#[derive(Debug)]
pub struct EntryCgroup {
    dir: PathBuf,
}

impl EntryCgroup {
    /// `<machine cgroup>/<prefix>-<our pid>` in the cgroup2 hierarchy; `machine_cgroup` is the
    /// machine's cgroup as `/proc/PID/cgroup` shows it. `None` for a machine without a cgroup
    /// of its own (the root) or when it cannot be made: the command then runs in ours.
    pub fn create(cfg: &CgroupConfig, machine_cgroup: &str, prefix: &str) -> Option<EntryCgroup> {
        if machine_cgroup.trim_matches('/').is_empty() {
            return None;
        }
        let mount = detect(cfg).ok()?.into_iter().find(|h| h.v2)?.mount;
        let dir = mount
            .join(machine_cgroup.trim_start_matches('/'))
            .join(format!("{prefix}-{}", std::process::id()));
        fs::create_dir(&dir).ok()?;
        Some(EntryCgroup { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EntryCgroup {
    fn drop(&mut self) {
        // Its last process may still be exiting.
        let _ = remove_tree(&self.dir, Duration::from_secs(1));
    }
}

/// Moves the calling thread into the v1 cgroups `pid` is in (a single-threaded caller moves
/// with it); the cgroup2 membership is left alone. Used to put `mctl shell` beside a machine's
/// processes on hybrid hosts.
pub fn join_v1_cgroups_of(cfg: &CgroupConfig, pid: u32) -> Result<(), CgroupError> {
    let hierarchies = detect(cfg)?;
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let theirs = read_kernel_file(&path).map_err(io_err("read", &path))?;
    for line in theirs.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctl, cg) = (it.next(), it.next().unwrap_or(""), it.next().unwrap_or(""));
        if ctl.is_empty() {
            continue;
        }
        let wanted: Vec<&str> = ctl.split(',').collect();
        if let Some(h) = hierarchies.iter().find(|h| !h.v2 && wanted.iter().all(|c| h.is(c))) {
            write(&h.mount.join(cg.trim_start_matches('/')).join("tasks"), "0")?;
        }
    }
    Ok(())
}

/// Freezes (`true`) or thaws the processes of the cgroup2 directory `dir` and waits until the
/// kernel reports the new state in `cgroup.events` (freezing completes asynchronously);
/// `Ok(false)` when it did not within `patience`.
pub fn freeze(dir: &Path, frozen: bool, patience: Duration) -> Result<bool, CgroupError> {
    let want = if frozen { "1" } else { "0" };
    write(&dir.join("cgroup.freeze"), want)?;
    let deadline = Instant::now() + patience;
    loop {
        if is_frozen(dir) == frozen {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the cgroup2 directory `dir` is frozen.
pub fn is_frozen(dir: &Path) -> bool {
    read_kernel_file(dir.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
}

/// Removes an empty cgroup subtree without waiting (for leftovers of dead launchers).
pub fn remove_tree_now(dir: &Path) -> Result<(), CgroupError> {
    remove_tree(dir, Duration::ZERO)
}

/// Whether any process is in `dir` or below.
pub fn has_processes(dir: &Path) -> bool {
    !pids_in(dir).is_empty()
}

/// Thaws every cgroup of a v1 `freezer` subtree; returns how many were frozen or freezing.
///
/// A guest may mount the v1 freezer hierarchy (its cgroup namespace shows it its own part) and
/// freeze itself, and a task frozen there does not even die of SIGKILL until it is thawed: so
/// whoever kills a machine thaws it after sending the signal. mctl itself freezes machines only
/// through cgroup2, so nothing here undoes a freeze of ours. Best effort: a directory without
/// `freezer.state` (another hierarchy's) or gone meanwhile is passed over.
pub fn thaw_v1_freezer(dir: &Path) -> usize {
    let mut frozen = 0;
    tree::each(dir, &mut |cgroup| {
        if tree::read_at(cgroup, "freezer.state").is_ok_and(|s| s.trim() != "THAWED") {
            frozen += 1;
            let _ = tree::write_at(cgroup, "freezer.state", "THAWED");
        }
    });
    frozen
}

/// Sends SIGKILL to every process in `dir` and below: through cgroup2's `cgroup.kill`, or one
/// by one where there is none (before Linux 5.14, or a v1 hierarchy).
pub fn kill_all(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in pids_in(dir) {
            let _ = crate::sys::linux::send_signal(pid, libc::SIGKILL);
        }
    }
}

/// Every pid in `dir` and below (none if `dir` is gone).
pub fn pids_in(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    tree::each(dir, &mut |cgroup| {
        if let Ok(s) = tree::read_at(cgroup, "cgroup.procs") {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    });
    out
}

/// Removes a cgroup subtree depth-first. Processes that are still dying get `patience` to
/// leave; after that whatever is left is killed and waited for once more.
pub(crate) fn remove_tree(dir: &Path, patience: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + patience;
    let mut killed = false;
    loop {
        match remove_tree_once(dir) {
            Ok(()) => return Ok(()),
            Err((_, e)) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {}
            Err((_, e)) if e.raw_os_error() == Some(libc::EBUSY) && !killed && !patience.is_zero() => {
                kill_all(dir);
                thaw_v1_freezer(dir);
                killed = true;
            }
            Err((path, e)) => {
                return Err(CgroupError::Io { step: "remove", path, source: e });
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove_tree_once(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    // Usually a leaf: rmdir alone does it. A cgroup with child cgroups (or processes) is busy.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => return Err((dir.to_owned(), e)),
    }
    // The guest's cgroups below, by descriptor (see tree): names the guest chose, at any depth.
    let removed = tree::walk(dir, &mut |_| Ok(()), &mut |parent, name| match rustix::fs::unlinkat(
        parent,
        name,
        rustix::fs::AtFlags::REMOVEDIR,
    ) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    });
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err((dir.to_owned(), e)),
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err((dir.to_owned(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
4:memory:/agent/abc
1:cpu:/
0::/
";

    #[test]
    fn detects_hybrid_layout_and_own_paths() {
        let hs = parse_hierarchies(HYBRID_MOUNTINFO, HYBRID_SELF, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(hs.len(), 4);
        assert!(hs[0].v2);
        assert_eq!(hs[0].mount, Path::new("/sys/fs/cgroup/unified"));
        let mem = hs.iter().find(|h| h.is("memory")).unwrap();
        assert_eq!(mem.own, "/agent/abc");
        assert_eq!(mem.own_dir(), Path::new("/sys/fs/cgroup/memory/agent/abc"));
        assert!(hs.iter().any(|h| h.is("name=systemd")));
    }

    #[test]
    fn hierarchies_hidden_by_a_later_mount_do_not_count() {
        let over_cgroup = format!("{HYBRID_MOUNTINFO}40 30 0:31 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        let hs = parse_hierarchies(&over_cgroup, HYBRID_SELF, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(hs.len(), 1, "{hs:?}");
        assert_eq!(hs[0].mount, Path::new("/sys/fs/cgroup"));
        let fresh_sys = format!("{HYBRID_MOUNTINFO}41 25 0:32 / /sys rw - sysfs sysfs rw\n");
        assert!(matches!(
            parse_hierarchies(&fresh_sys, HYBRID_SELF, Path::new("/sys/fs/cgroup")),
            Err(CgroupError::NoUnified(_))
        ));
    }

    #[test]
    fn a_cgroup_outside_the_namespace_counts_as_its_root() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let hs = parse_hierarchies(mi, "0::/../../..\n", Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(hs[0].own_dir(), Path::new("/sys/fs/cgroup/"));
    }

    #[test]
    fn detects_pure_v2_and_rejects_v1_only() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let hs = parse_hierarchies(mi, "0::/user.slice/x.scope\n", Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].own_dir(), Path::new("/sys/fs/cgroup/user.slice/x.scope"));
        let v1 = "31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert!(matches!(
            parse_hierarchies(v1, "1:cpu:/\n", Path::new("/sys/fs/cgroup")),
            Err(CgroupError::NoUnified(_))
        ));
    }
}
