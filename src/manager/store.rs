//! Runtime state: one file per machine under the state directory (`/run/mctl/machines`),
//! written atomically (temporary file, rename) so a crash of mctld never leaves a torn file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::machine::Machine;

/// A state-store operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("state store: cannot {step} {}: {source}", path.display())]
pub struct StoreError {
    /// What was being done.
    pub step: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) the state directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError {
            step: "create",
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self { dir: dir.to_owned() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a machine's state file atomically.
    pub fn save(&self, m: &Machine) -> Result<(), StoreError> {
        let path = self.path(&m.name);
        let tmp = self.dir.join(format!(".#{}.tmp", m.name));
        let err = |step| move |source| StoreError { step, path: path.clone(), source };
        let write = || -> io::Result<()> {
            let mut f =
                fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
            // No fsync: the file describes live processes, so it only has to survive mctld
            // crashing (which rename guarantees), not the host (whose processes die with it).
            f.write_all(m.to_state_file().as_bytes())?;
            fs::rename(&tmp, self.path(&m.name))
        };
        write()
            .inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
            .map_err(err("write"))
    }

    /// Removes a machine's state file (missing is fine).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError { step: "remove", path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every machine with a readable state file; unreadable or malformed files (and leftover
    /// temporary files) are removed.
    pub fn load_all(&self) -> Vec<Machine> {
        let Ok(rd) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let parsed = fs::read_to_string(e.path()).ok().and_then(|t| Machine::from_state_file(&t));
            match parsed {
                Some(m) if m.name == name && !name.starts_with('.') => out.push(m),
                _ => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::machine::{Class, State};
    use super::*;

    #[test]
    fn saves_loads_and_drops_junk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("machines")).unwrap();
        let m = Machine {
            name: "a".into(),
            id: None,
            timestamp: 1,
            timestamp_monotonic: 2,
            service: "mctl".into(),
            unit: String::new(),
            leader: 42,
            leader_start: 7,
            class: Class::Container,
            root_directory: "/x".into(),
            netif: vec![],
            state: State::Running,
            cgroup: String::new(),
        };
        store.save(&m).unwrap();
        fs::write(dir.path().join("machines/torn"), "NAME=torn\nLEADER=").unwrap();
        fs::write(dir.path().join("machines/.#b.tmp"), "half").unwrap();
        assert_eq!(store.load_all(), vec![m]);
        assert_eq!(fs::read_dir(dir.path().join("machines")).unwrap().count(), 1);
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert!(store.load_all().is_empty());
    }
}
