//! Image verbs: list-images, image-status, clone, rename, remove, read-only, import-tar,
//! export-tar, pull-tar, pull-lxc, bootstrap. They work on the store directly (no daemon),
//! with machinectl's wording where it has one.

use std::io::IsTerminal;
use std::path::Path;

use crate::images::bootstrap::{self, BootstrapError};
use crate::images::compress::Compression;
use crate::images::interrupt::{self, Interrupted};
use crate::images::lxc::{self, LxcError, LxcRequest};
use crate::images::pull::{self, PullError, PullOptions, Verify};
use crate::images::tar_export::{self, ExportError};
use crate::images::tar_import::{self, ImportError};
use crate::images::{ImageInfo, ImageStore, StoreError};

use crate::names;

use super::args::{
    CloneArgs, ExportTarArgs, ImportTarArgs, ListImagesArgs, OutputFormat, PullLxcArgs, PullTarArgs,
    ReadOnlyArgs, RenameArgs, TarFormat, VerifyMode, YesNo,
};
use super::output::{self, bytes, emit};
use super::{CliConfig, CliError};

pub(super) fn store(cfg: &CliConfig) -> ImageStore {
    ImageStore::new(&cfg.image_store)
}

/// Verbs that change the store need root: image trees hold files of every owner, device nodes
/// and capabilities, and the immutable flag needs CAP_LINUX_IMMUTABLE.
pub(super) fn need_root(verb: &str) -> Result<(), CliError> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(CliError::new(format!("mctl {verb} changes the image store and must be run as root")))
    }
}

/// Signals during a long operation must leave no temporary behind (see `images::interrupt`).
pub(super) fn catch_signals() -> Result<(), CliError> {
    interrupt::install().map_err(|e| CliError::new(format!("cannot install signal handlers: {e}")))
}

pub(super) fn interrupted(i: Interrupted) -> CliError {
    CliError { message: "interrupted; nothing was left behind".into(), exit_code: i.exit_code() }
}

fn store_err(e: StoreError) -> CliError {
    match e {
        StoreError::Interrupted(i) => interrupted(i),
        e => CliError::new(e.to_string()),
    }
}

fn import_err(e: ImportError) -> CliError {
    match e.interrupted() {
        Some(i) => interrupted(i),
        None => CliError::new(format!("import failed: {e}")),
    }
}

fn pull_err(e: PullError) -> CliError {
    match e.interrupted() {
        Some(i) => interrupted(i),
        None => CliError::new(e.to_string()),
    }
}

fn dash(v: Option<u64>, f: impl Fn(u64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// `mctl list-images`.
pub fn list_images(a: &ListImagesArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    let images = store(cfg).list().map_err(store_err)?;
    emit(&format_images(&images, a));
    Ok(0)
}

fn format_images(images: &[ImageInfo], a: &ListImagesArgs) -> String {
    match a.output {
        OutputFormat::Json | OutputFormat::JsonPretty => {
            let items: Vec<serde_json::Value> = images
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "name": i.name,
                        "type": i.image_type.as_str(),
                        "ro": i.read_only,
                        "usage": i.usage,
                        "created": i.created_us,
                        "modified": i.modified_us,
                    })
                })
                .collect();
            output::json(&items, a.output == OutputFormat::JsonPretty)
        }
        OutputFormat::Table => {
            if images.is_empty() {
                return if a.no_legend { String::new() } else { "No images.\n".into() };
            }
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.image_type.as_str().to_owned(),
                        if i.read_only { "yes" } else { "no" }.to_owned(),
                        dash(i.usage, bytes),
                        dash(i.created_us, output::timestamp),
                        dash(i.modified_us, output::timestamp),
                    ]
                })
                .collect();
            if a.no_legend {
                output::table(&[], &rows)
            } else {
                let mut t = output::table(&["NAME", "TYPE", "RO", "USAGE", "CREATED", "MODIFIED"], &rows);
                t.push_str(&format!("\n{} images listed.\n", images.len()));
                t
            }
        }
    }
}

/// `mctl image-status`.
pub fn image_status(names: &[String], format: OutputFormat, cfg: &CliConfig) -> Result<i32, CliError> {
    let s = store(cfg);
    let now = crate::sys::linux::clock_us(libc::CLOCK_REALTIME);
    let mut out = String::new();
    let mut objects = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let i = s.status(name).map_err(store_err)?;
        let os = s.os_release(name).map_err(store_err)?;
        let get = |k: &str| os.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        if format != OutputFormat::Table {
            objects.push(serde_json::json!({
                "name": i.name,
                "path": i.path,
                "type": i.image_type.as_str(),
                "os": get("PRETTY_NAME").or_else(|| get("NAME")),
                "read_only": i.read_only,
                "usage": i.usage,
                "created_us": i.created_us,
                "modified_us": i.modified_us,
            }));
            continue;
        }
        let time = |t: Option<u64>| {
            dash(t, |us| format!("{}; {}", output::timestamp(us), output::relative(us, now)))
        };
        if n > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}\n", i.name));
        out.push_str(&format!("\t    Path: {}\n", i.path.display()));
        out.push_str(&format!("\t    Type: {}\n", i.image_type.as_str()));
        if let Some(pretty) = get("PRETTY_NAME").or_else(|| get("NAME")) {
            out.push_str(&format!("\t      OS: {}\n", output::printable(&pretty)));
        }
        out.push_str(&format!("\t      RO: {}\n", if i.read_only { "read-only" } else { "writable" }));
        out.push_str(&format!("\t   Usage: {}\n", dash(i.usage, bytes)));
        out.push_str(&format!("\t Created: {}\n", time(i.created_us)));
        out.push_str(&format!("\tModified: {}\n", time(i.modified_us)));
        out.push_str(&super::oci::status_lines(&s, name));
    }
    if format != OutputFormat::Table {
        out = output::json(&objects, format == OutputFormat::JsonPretty);
    }
    emit(&out);
    Ok(0)
}

/// `mctl clone`.
pub fn clone(a: &CloneArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("clone")?;
    catch_signals()?;
    store(cfg).clone_image(&a.source, &a.destination, a.read_only).map_err(store_err)?;
    Ok(0)
}

/// `mctl rename`.
pub fn rename(a: &RenameArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("rename")?;
    store(cfg).rename(&a.old, &a.new).map_err(store_err)?;
    Ok(0)
}

/// `mctl remove`: every name is tried; a single failure is the error, several are logged.
pub fn remove(names: &[String], cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("remove")?;
    let s = store(cfg);
    let mut failed: Vec<StoreError> = names.iter().filter_map(|n| s.remove(n).err()).collect();
    match failed.len() {
        0 => Ok(0),
        1 => Err(store_err(failed.remove(0))),
        n => {
            for e in &failed {
                tracing::error!("{e}");
            }
            Err(CliError::new(format!("{n} of {} images could not be removed", names.len())))
        }
    }
}

/// `mctl read-only`.
pub fn read_only(a: &ReadOnlyArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("read-only")?;
    store(cfg).set_read_only(&a.name, a.value == YesNo::Yes).map_err(store_err)?;
    Ok(0)
}

/// The image name a local file or URL suggests.
fn name_from_file(path: &Path) -> Option<String> {
    pull::name_from_file_name(path.file_name()?.to_str()?)
}

fn name_or_default(given: Option<&str>, derived: Option<String>, from: &str) -> Result<String, CliError> {
    let name = match given {
        Some(n) => n.to_owned(),
        None => derived
            .ok_or_else(|| CliError::new(format!("cannot derive an image name from '{from}'; give one")))?,
    };
    names::validate(&name).map_err(|e| CliError::new(format!("invalid image name '{name}': {e}")))?;
    Ok(name)
}

/// `mctl import-tar`.
pub fn import_tar(a: &ImportTarArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("import-tar")?;
    let stdin = a.file.as_os_str() == "-";
    let derived = if stdin { None } else { name_from_file(&a.file) };
    let name = name_or_default(a.name.as_deref(), derived, &a.file.display().to_string())?;
    catch_signals()?;
    let s = store(cfg);
    let info = if stdin {
        if std::io::stdin().is_terminal() {
            return Err(CliError::new("refusing to read an archive from a terminal"));
        }
        tar_import::import_tar(&s, &name, std::io::stdin()).map_err(import_err)?
    } else {
        let f = std::fs::File::open(&a.file)
            .map_err(|e| CliError::new(format!("cannot open '{}': {e}", a.file.display())))?;
        tar_import::import_tar(&s, &name, f).map_err(import_err)?
    };
    if a.read_only {
        s.set_read_only(&name, true).map_err(store_err)?;
    }
    tracing::info!("imported image '{}' at {}", info.name, info.path.display());
    Ok(0)
}

fn compression(f: TarFormat) -> Compression {
    match f {
        TarFormat::Tar => Compression::None,
        TarFormat::Gzip => Compression::Gzip,
        TarFormat::Xz => Compression::Xz,
        TarFormat::Zstd => Compression::Zstd,
    }
}

fn export_err(e: ExportError) -> CliError {
    match e {
        ExportError::Interrupted(i) | ExportError::Store(StoreError::Interrupted(i)) => interrupted(i),
        e => CliError::new(format!("export failed: {e}")),
    }
}

/// `mctl export-tar`.
pub fn export_tar(a: &ExportTarArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    catch_signals()?;
    let s = store(cfg);
    let format = a.format.map(compression);
    if a.file.as_os_str() == "-" {
        let out = std::io::stdout();
        if out.is_terminal() {
            return Err(CliError::new("refusing to write an archive to a terminal; give a file name"));
        }
        let mut out = tar_export::export_tar(&s, &a.name, out.lock(), format.unwrap_or(Compression::None))
            .map_err(export_err)?;
        std::io::Write::flush(&mut out).map_err(|e| CliError::new(format!("export failed: {e}")))?;
    } else {
        tar_export::export_tar_file(&s, &a.name, &a.file, format).map_err(export_err)?;
    }
    Ok(0)
}

fn pull_options(verify: VerifyMode, cfg: &CliConfig) -> PullOptions {
    PullOptions {
        verify: match verify {
            VerifyMode::Checksum => Verify::Checksum,
            VerifyMode::No => Verify::No,
        },
        cache: Some(cfg.pull_cache.clone()),
        progress: std::io::stderr().is_terminal(),
    }
}

/// `mctl pull-tar`.
pub fn pull_tar(a: &PullTarArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("pull-tar")?;
    catch_signals()?;
    let s = store(cfg);
    let info =
        pull::pull_tar(&s, &a.url, a.name.as_deref(), &pull_options(a.verify, cfg)).map_err(pull_err)?;
    if a.read_only {
        s.set_read_only(&info.name, true).map_err(store_err)?;
    }
    tracing::info!("pulled image '{}' to {}", info.name, info.path.display());
    Ok(0)
}

/// `mctl pull-lxc`.
pub fn pull_lxc(a: &PullLxcArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("pull-lxc")?;
    catch_signals()?;
    let req = LxcRequest {
        server: a.server.clone(),
        dist: a.dist.clone(),
        release: a.release.clone(),
        arch: a.arch.clone().unwrap_or_else(|| lxc::host_arch().to_owned()),
        variant: a.variant.clone(),
    };
    let info = lxc::pull_lxc(&store(cfg), &req, a.name.as_deref(), &pull_options(a.verify, cfg)).map_err(
        |e| match e {
            LxcError::Pull(p) => pull_err(p),
            e => CliError::new(e.to_string()),
        },
    )?;
    tracing::info!("pulled image '{}' to {}", info.name, info.path.display());
    Ok(0)
}

/// `mctl bootstrap`.
pub fn bootstrap(a: &super::args::BootstrapArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    need_root("bootstrap")?;
    catch_signals()?;
    let info = bootstrap::bootstrap(
        &store(cfg),
        &a.distribution,
        &a.suite,
        &a.name,
        a.mirror.as_deref(),
        &bootstrap::recipe_dir(),
    )
    .map_err(|e| match e {
        BootstrapError::Interrupted(i) | BootstrapError::Store(StoreError::Interrupted(i)) => interrupted(i),
        e => CliError::new(e.to_string()),
    })?;
    tracing::info!("created image '{}' at {}", info.name, info.path.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_like_systemd() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(2048), "2.0K");
        assert_eq!(bytes(155 * 1024 * 1024 + 200 * 1024), "155.2M");
        assert_eq!(bytes(3 << 30), "3.0G");
    }

    #[test]
    fn image_table_like_machinectl() {
        let img = ImageInfo {
            name: "deb".into(),
            path: "/s/deb".into(),
            image_type: crate::images::store::ImageType::Directory,
            read_only: true,
            created_us: None,
            modified_us: None,
            usage: None,
        };
        let a = ListImagesArgs { no_legend: false, output: OutputFormat::Table };
        assert_eq!(
            format_images(std::slice::from_ref(&img), &a),
            "NAME TYPE      RO  USAGE CREATED MODIFIED\ndeb  directory yes -     -       -\n\n1 images listed.\n"
        );
        let a = ListImagesArgs { no_legend: true, output: OutputFormat::Json };
        let v: serde_json::Value = serde_json::from_str(&format_images(&[img], &a)).unwrap();
        assert_eq!(v[0]["name"], "deb");
        assert_eq!(v[0]["ro"], true);
        assert_eq!(
            format_images(&[], &ListImagesArgs { no_legend: false, output: OutputFormat::Table }),
            "No images.\n"
        );
    }

    #[test]
    fn names_from_files() {
        assert_eq!(name_from_file(Path::new("/tmp/debian-12.tar.xz")).as_deref(), Some("debian-12"));
        assert_eq!(name_from_file(Path::new("x.tgz")).as_deref(), Some("x"));
    }
}
