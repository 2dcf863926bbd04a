//! Container state under the runtime's root (`--root`, `/run/mctl/oci` by default): one
//! directory per container holding `state.json` (written atomically), the exec fifo while the
//! container waits for `start`, and a lock file every mutating call holds, so the concurrent
//! calls an engine makes are serialised per container.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::ContainerError;
use super::cgroup::ContainerCgroup;

/// The default state root.
pub const DEFAULT_ROOT: &str = "/run/mctl/oci";

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
/// The fifo the container's init blocks on until `start` opens it.
pub const EXEC_FIFO: &str = "exec.fifo";

/// A container's status, as the runtime specification names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created (only hooks see this).
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// The user's process runs.
    Running,
    /// Frozen.
    Paused,
    /// Its init has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime remembers of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The container id.
    pub id: String,
    /// The init's pid in the runtime's pid namespace.
    pub pid: i32,
    /// The init's start time (clock ticks after boot), so a reused pid is not mistaken for it.
    pub start_time: u64,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The root filesystem on the host.
    pub rootfs: PathBuf,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
    /// Annotations from `config.json`.
    pub annotations: BTreeMap<String, String>,
    /// The container's cgroup in each hierarchy.
    pub cgroup: ContainerCgroup,
    /// The configuration it was created from (hooks, process defaults for `exec`, seccomp).
    pub config: oci_spec::runtime::Spec,
    /// Registered with mctld as this machine name.
    #[serde(default)]
    pub registered_as: Option<String>,
}

impl Record {
    /// The status now: from whether the init still runs (and is the same process), the
    /// freezer and whether the exec fifo is still there.
    pub fn status(&self, dir: &Path) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if self.cgroup.is_frozen() {
            return Status::Paused;
        }
        if dir.join(EXEC_FIFO).exists() { Status::Created } else { Status::Running }
    }

    /// Whether the init is alive and is the process that was created (not a reuse of its pid);
    /// a zombie counts as gone.
    pub fn init_alive(&self) -> bool {
        let Ok(pid) = u32::try_from(self.pid) else { return false };
        crate::procfs::start_time(pid) == Some(self.start_time) && !is_zombie(pid)
    }

    /// The state document `state` prints and hooks read on stdin.
    pub fn state_json(&self, status: Status) -> serde_json::Value {
        let pid = if status == Status::Stopped { 0 } else { self.pid };
        let mut v = serde_json::json!({
            "ociVersion": super::OCI_VERSION,
            "id": self.id,
            "pid": pid,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
        });
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::json!(self.annotations);
        }
        v
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(true)
}

/// The state root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A container's state directory, locked for as long as this lives.
#[derive(Debug)]
pub struct Locked {
    /// The directory.
    pub dir: PathBuf,
    _lock: Flock<File>,
    /// Its record; `None` when a `create` died before writing one.
    pub record: Option<Record>,
}

impl Store {
    /// The store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The container's directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Makes the directory of a new container and locks it; `Exists` when the id is taken.
    pub fn reserve(&self, id: &str) -> Result<Locked, ContainerError> {
        check_id(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(ContainerError::io("create the state root", &self.root))?;
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(ContainerError::Exists(id.into())),
            Err(e) => return Err(ContainerError::io("create the state directory", &dir)(e)),
        }
        let lock = lock(&dir)?;
        Ok(Locked { dir, _lock: lock, record: None })
    }

    /// Locks an existing container's directory and reads its record.
    pub fn open(&self, id: &str) -> Result<Locked, ContainerError> {
        check_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(ContainerError::NotFound(id.into()));
        }
        let lock = lock(&dir)?;
        // Removed by a `delete` we waited for.
        if !dir.is_dir() {
            return Err(ContainerError::NotFound(id.into()));
        }
        let path = dir.join(STATE_FILE);
        let record = match fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| ContainerError::Config {
                path: path.clone(),
                reason: format!("unreadable state: {e}"),
            })?),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(ContainerError::io("read", &path)(e)),
        };
        Ok(Locked { dir, _lock: lock, record })
    }

    /// The ids of every container, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| super::valid_id(id))
            .collect();
        out.sort();
        out
    }
}

fn check_id(id: &str) -> Result<(), ContainerError> {
    if super::valid_id(id) { Ok(()) } else { Err(ContainerError::BadId(id.into())) }
}

fn lock(dir: &Path) -> Result<Flock<File>, ContainerError> {
    let path = dir.join(LOCK_FILE);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(ContainerError::io("open", &path))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| ContainerError::io("lock", &path)(std::io::Error::from(e)))
}

impl Locked {
    /// Writes the record (to a temporary file renamed over the old one).
    pub fn save(&mut self, record: Record) -> Result<(), ContainerError> {
        let bytes = serde_json::to_vec(&record).map_err(|e| ContainerError::Invalid(e.to_string()))?;
        write_atomic(&self.dir.join(STATE_FILE), &bytes, 0o600)?;
        self.record = Some(record);
        Ok(())
    }

    /// Removes the directory (the lock goes with it).
    pub fn remove(self) -> Result<(), ContainerError> {
        fs::remove_dir_all(&self.dir).map_err(ContainerError::io("remove", &self.dir))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename:
/// readers see the old or the new content, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ContainerError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ContainerError::io("write", path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reserved_once_and_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("oci"));
        let held = store.reserve("c1").unwrap();
        assert!(matches!(store.reserve("c1"), Err(ContainerError::Exists(_))));
        assert!(matches!(store.reserve("../x"), Err(ContainerError::BadId(_))));
        drop(held);
        assert_eq!(store.ids(), vec!["c1".to_owned()]);
        let opened = store.open("c1").unwrap();
        assert!(opened.record.is_none(), "a create that wrote nothing has no record");
        opened.remove().unwrap();
        assert!(matches!(store.open("c1"), Err(ContainerError::NotFound(_))));
    }
}
