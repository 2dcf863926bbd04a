//! `oci-bundle`: an OCI runtime bundle (`config.json` and `rootfs/`) from an image, for runc,
//! crun or youki. The process comes from the image configuration (entrypoint and command,
//! environment, working directory, user resolved in the image's own passwd and group); the
//! rest is oci-spec's default Linux configuration.

use std::os::fd::AsFd;
use std::path::Path;

use oci_spec::runtime::{Spec, UserBuilder};

use super::OciError;
use super::meta;
use crate::images::interrupt::Temporary;
use crate::images::store::{self, ImageStore, random_suffix};

/// The default PATH of OCI runtimes.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolves an image's `User` (`name`, `uid`, `name:group`, `uid:gid`) in its passwd and
/// group files: (uid, gid).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == u || f[2] == u));
    let (uid, primary) = match (u.parse::<u32>(), entry) {
        (_, Some(f)) => (f[2].parse().map_err(|_| format!("bad passwd entry for {u}"))?, f[3].parse().ok()),
        (Ok(n), None) => (n, None),
        (Err(_), None) => return Err(format!("user '{u}' is not in the image's /etc/passwd")),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group '{g}' is not in the image's /etc/group"))?,
        },
        None => primary.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// Writes the bundle of image `name` to the new directory `dir`.
pub fn write_bundle(store: &ImageStore, name: &str, dir: &Path) -> Result<(), OciError> {
    let info = store.get(name)?;
    if dir.symlink_metadata().is_ok() {
        return Err(OciError::Io {
            step: "cannot write the bundle to",
            path: dir.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    let run = match meta::load(store, name)? {
        Some(m) => m.run_config()?,
        None => meta::RunConfig::default(),
    };
    let root = crate::images::walk::open_dir(&info.path)?;
    let read = |p: &str| {
        crate::guestfs::read_string(root.as_fd(), Path::new(p), crate::guestfs::SMALL_FILE_LIMIT)
            .unwrap_or_default()
    };
    let (uid, gid) = match &run.user {
        Some(u) => resolve_user(u, &read("/etc/passwd"), &read("/etc/group"))
            .map_err(|e| OciError::invalid(format!("the configuration of image {name}"), e))?,
        None => (0, 0),
    };
    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    if !run.argv.is_empty() {
        process.set_args(Some(run.argv.clone()));
    }
    let mut env: Vec<String> = Vec::new();
    if !run.env.iter().any(|(k, _)| k == "PATH") {
        env.push(DEFAULT_PATH.into());
    }
    env.extend(run.env.iter().map(|(k, v)| format!("{k}={v}")));
    process.set_env(Some(env));
    process.set_cwd(run.workdir.clone().unwrap_or_else(|| "/".into()).into());
    process.set_user(
        UserBuilder::default()
            .uid(uid)
            .gid(gid)
            .build()
            .map_err(|e| OciError::invalid("the bundle's user", e))?,
    );
    spec.set_process(Some(process));
    spec.set_hostname(Some(name.to_owned()));
    let mut r = spec.root().clone().unwrap_or_default();
    r.set_path("rootfs".into());
    r.set_readonly(Some(false));
    spec.set_root(Some(r));
    let text = serde_json::to_vec_pretty(&spec).expect("a runtime spec serializes");

    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let base = dir.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = Temporary::register(parent.join(format!(".#{base}.{}", random_suffix())));
    std::fs::create_dir(tmp.path()).map_err(OciError::io("cannot create", tmp.path()))?;
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).map_err(OciError::io("cannot create", &rootfs))?;
    let _lock = store.lock(name, true)?;
    store::copy_tree(&info.path, &rootfs)?;
    std::fs::write(tmp.path().join("config.json"), text)
        .map_err(OciError::io("cannot write", tmp.path().join("config.json")))?;
    tmp.commit(|p| {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            p,
            rustix::fs::CWD,
            dir,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| OciError::Io {
            step: "cannot move the bundle into place at",
            path: dir.to_owned(),
            source: e.into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let passwd = "root:x:0:0::/root:/bin/sh\nweb:x:33:34::/var/www:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("web", passwd, group), Ok((33, 34)));
        assert_eq!(resolve_user("web:staff", passwd, group), Ok((33, 50)));
        assert_eq!(resolve_user("1000:1001", passwd, group), Ok((1000, 1001)));
        assert_eq!(resolve_user("33", passwd, group), Ok((33, 34)));
        assert!(resolve_user("nobody", passwd, group).is_err());
        assert!(resolve_user("web:nogroup", passwd, group).is_err());
    }
}
