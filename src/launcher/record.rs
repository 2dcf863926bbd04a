//! What a launch leaves on the host while it runs (its machine's cgroups, its scratch mount
//! point, `--overlay` work directories), recorded in `RUNTIME_DIR/launch.PID.json` so that the
//! next launcher cleans up after one that was killed. A launch that ends normally removes
//! everything itself, the record included.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::procfs::start_time;

use crate::cgroups;

/// The record's contents.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RecordData {
    /// The launcher.
    pid: u32,
    /// Its start time, to tell it from a later process with the same pid.
    start: u64,
    /// The machine's cgroups (removed when empty).
    cgroups: Vec<PathBuf>,
    /// Their shared parents (removed when empty).
    parents: Vec<PathBuf>,
    /// Work directories beside `--overlay` upper layers.
    workdirs: Vec<PathBuf>,
}

/// This launch's record; dropping it removes what it lists and the record itself.
#[derive(Debug)]
pub struct LaunchRecord {
    file: PathBuf,
    scratch: PathBuf,
    data: RecordData,
}

fn launch_paths(runtime_dir: &Path, pid: u32) -> (PathBuf, PathBuf) {
    (runtime_dir.join(format!("launch.{pid}.json")), runtime_dir.join(format!("launch.{pid}")))
}

impl LaunchRecord {
    /// Starts this launch's record (and its empty scratch directory when `scratch`).
    pub fn create(runtime_dir: &Path, scratch: bool, workdirs: Vec<PathBuf>) -> io::Result<Self> {
        fs::create_dir_all(runtime_dir)?;
        let pid = std::process::id();
        let (file, dir) = launch_paths(runtime_dir, pid);
        if scratch {
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        let data = RecordData { pid, start: start_time(pid).unwrap_or(0), workdirs, ..RecordData::default() };
        let me = LaunchRecord { file, scratch: dir, data };
        // With nothing to clean up yet, the first write waits for the cgroups.
        if scratch || !me.data.workdirs.is_empty() {
            me.save()?;
        }
        Ok(me)
    }

    /// The empty host directory the outer child mounts its scratch tmpfs on.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    /// Records the machine's cgroups (before any process is in them).
    pub fn set_cgroups(&mut self, dirs: Vec<PathBuf>, parents: Vec<PathBuf>) -> io::Result<()> {
        self.data.cgroups = dirs;
        self.data.parents = parents;
        self.save()
    }

    /// The machine's cgroups are gone: nothing to remove at the end. (The file on disk may
    /// still name them; a sweep finds them gone.)
    pub fn forget_cgroups(&mut self) {
        self.data.cgroups.clear();
        self.data.parents.clear();
    }

    fn save(&self) -> io::Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.data).map_err(io::Error::other)?)?;
        fs::rename(&tmp, &self.file)
    }
}

impl Drop for LaunchRecord {
    fn drop(&mut self) {
        remove_listed(&self.data);
        let _ = fs::remove_dir(&self.scratch);
        let _ = fs::remove_file(&self.file);
    }
}

fn remove_listed(d: &RecordData) {
    for cg in &d.cgroups {
        // A cgroup that still has processes is not ours to empty.
        if !cgroups::has_processes(cg) {
            let _ = cgroups::remove_tree_now(cg);
        }
    }
    for p in &d.parents {
        let _ = fs::remove_dir(p);
    }
    for w in &d.workdirs {
        let _ = fs::remove_dir_all(w);
    }
}

/// Cleans up after launchers that died without doing it themselves.
pub fn sweep(runtime_dir: &Path) {
    let Ok(rd) = fs::read_dir(runtime_dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("launch.")
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(data) = fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<RecordData>(&b).ok())
        else {
            continue;
        };
        let alive = start_time(pid).is_some_and(|t| data.start == 0 || t == data.start);
        if alive {
            continue;
        }
        remove_listed(&data);
        let (file, dir) = launch_paths(runtime_dir, pid);
        let _ = fs::remove_dir(dir);
        let _ = fs::remove_file(file);
    }
}
