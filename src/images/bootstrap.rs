//! `bootstrap`: makes a new image with a recipe from `bootstrap/` (debootstrap or mmdebstrap
//! underneath). The recipe builds in a hidden sibling of the image and renames it into place
//! when whole, and removes its temporary on failure or on SIGINT/SIGTERM itself.
//!
//! Where the recipes are: `$MCTL_BOOTSTRAP_DIR` if set; else `share/mctl/bootstrap` beside an
//! installed binary's `bin/` (`/usr/local/bin/mctl` → `/usr/local/share/mctl/bootstrap`); else
//! the source tree's `bootstrap/` as compiled in (`cargo build` output run from a checkout).

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::interrupt::{self, Interrupted};
use super::store::{ImageInfo, ImageStore, StoreError};

/// Why a bootstrap failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No recipe for the distribution.
    #[error("no bootstrap recipe for '{0}' (known: debian, ubuntu)")]
    UnknownDistribution(String),
    /// Neither tool is installed.
    #[error("neither debootstrap nor mmdebstrap is installed (apt-get install debootstrap)")]
    NoTool,
    /// The recipe file is missing.
    #[error(
        "the bootstrap recipe {0} is missing (set MCTL_BOOTSTRAP_DIR to the directory of mctl's bootstrap recipes)"
    )]
    NoRecipe(PathBuf),
    /// The suite name is unusable.
    #[error("invalid suite '{0}'")]
    BadSuite(String),
    /// The store refused (name taken, …).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The recipe could not be run.
    #[error("cannot run {path}: {source}")]
    Spawn {
        /// The recipe.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The recipe failed.
    #[error("the bootstrap recipe {path} failed ({status}); no image was created")]
    Failed {
        /// The recipe.
        path: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// A signal arrived.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// The directory holding the recipes (see the module documentation for the order).
pub fn recipe_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MCTL_BOOTSTRAP_DIR") {
        return PathBuf::from(d);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(prefix) = exe.parent().and_then(Path::parent)
    {
        let installed = prefix.join("share/mctl/bootstrap");
        if installed.is_dir() {
            return installed;
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/bootstrap"))
}

/// Whether an executable `name` is on `$PATH`.
fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d| {
        let p = d.join(name);
        rustix::fs::access(&p, rustix::fs::Access::EXEC_OK).is_ok() && p.is_file()
    })
}

/// Builds image `name` of `dist` `suite` with the recipe in `recipes`; `mirror` overrides the
/// distribution's default mirror.
pub fn bootstrap(
    store: &ImageStore,
    dist: &str,
    suite: &str,
    name: &str,
    mirror: Option<&str>,
    recipes: &Path,
) -> Result<ImageInfo, BootstrapError> {
    let default_mirror = match dist {
        "debian" => "http://deb.debian.org/debian",
        "ubuntu" => "http://archive.ubuntu.com/ubuntu",
        other => return Err(BootstrapError::UnknownDistribution(other.to_owned())),
    };
    if suite.is_empty() || !suite.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(BootstrapError::BadSuite(suite.to_owned()));
    }
    let dest = store.ensure_absent(name)?;
    if !on_path("debootstrap") && !on_path("mmdebstrap") {
        return Err(BootstrapError::NoTool);
    }
    let recipe = recipes.join("debian.sh");
    if !recipe.is_file() {
        return Err(BootstrapError::NoRecipe(recipe));
    }
    std::fs::create_dir_all(&store.root).map_err(|source| StoreError::Io {
        step: "cannot create the image store",
        path: store.root.clone(),
        source,
    })?;
    // The recipe's chatter goes to stderr: stdout is for results.
    let stdout = io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or_else(|_| Stdio::null());
    let mut child = Command::new("/bin/sh")
        .arg(&recipe)
        .arg(&dest)
        .arg(suite)
        .arg(mirror.unwrap_or(default_mirror))
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
        .map_err(|source| BootstrapError::Spawn { path: recipe.clone(), source })?;
    let mut forwarded = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(source) => return Err(BootstrapError::Spawn { path: recipe, source }),
        }
        if let Some(sig) = interrupt::received()
            && !forwarded
        {
            // The recipe's trap removes its temporary tree. (A child's pid is a positive pid_t:
            // were it not, there would be no process to signal.)
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::try_from(sig).unwrap_or(nix::sys::signal::Signal::SIGTERM),
                );
            }
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    interrupt::check()?;
    if !status.success() {
        return Err(BootstrapError::Failed { path: recipe, status });
    }
    Ok(store.get(name)?)
}
