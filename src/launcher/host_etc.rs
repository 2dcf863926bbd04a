//! The machine's `/etc/resolv.conf` and `/etc/localtime`: nspawn's `--resolv-conf=` and
//! `--timezone=`, with its modes, defaults and fallbacks (systemd 252). What the host has is
//! read by the launcher before the machine exists ([`HostEtc`]); what to do is decided from
//! that and the options ([`resolv_action`], [`localtime_action`]) and done by mount-plan steps
//! run inside the machine's root after the pivot ([`steps`]), so a guest's symlinks lead
//! nowhere outside it. Like nspawn, failures there are ignored: a read-only image keeps its own
//! files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::mounts::{Step, TreeId};

/// Where a resolv.conf comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvSource {
    /// The host's `/etc/resolv.conf`.
    Host,
    /// systemd-resolved's static file.
    Static,
    /// systemd-resolved's list of the uplink servers.
    Uplink,
    /// systemd-resolved's stub (127.0.0.53).
    Stub,
}

impl ResolvSource {
    const ALL: [ResolvSource; 4] =
        [ResolvSource::Host, ResolvSource::Static, ResolvSource::Uplink, ResolvSource::Stub];

    /// The host file.
    pub fn path(self) -> &'static Path {
        Path::new(match self {
            ResolvSource::Host => "/etc/resolv.conf",
            ResolvSource::Static => "/usr/lib/systemd/resolv.conf",
            ResolvSource::Uplink => "/run/systemd/resolve/resolv.conf",
            ResolvSource::Stub => "/run/systemd/resolve/stub-resolv.conf",
        })
    }

    fn name(self) -> &'static str {
        match self {
            ResolvSource::Host => "host",
            ResolvSource::Static => "static",
            ResolvSource::Uplink => "uplink",
            ResolvSource::Stub => "stub",
        }
    }
}

/// `--resolv-conf=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResolvConf {
    /// Leave the image's file alone.
    Off,
    /// Copy the source in, unless the image's file is not a regular file (a symlink).
    Copy(ResolvSource),
    /// Copy the source in, replacing whatever is there.
    Replace(ResolvSource),
    /// Bind the source read-only (a copy if the bind fails).
    Bind(ResolvSource),
    /// Remove the image's file.
    Delete,
    /// nspawn's choice: nothing with a private network, else the stub of a running
    /// systemd-resolved or the host's file, copied into a writable image and bound into a
    /// read-only one.
    #[default]
    Auto,
}

impl ResolvConf {
    /// Every mode's name, in nspawn's order (`--resolv-conf=help`).
    pub fn names() -> Vec<String> {
        let sources = || ResolvSource::ALL.into_iter().map(ResolvSource::name);
        std::iter::once("off".to_owned())
            .chain(
                ["copy", "replace", "bind"]
                    .into_iter()
                    .flat_map(|k| sources().map(move |s| format!("{k}-{s}"))),
            )
            .chain(["delete".to_owned(), "auto".to_owned()])
            .collect()
    }
}

impl FromStr for ResolvConf {
    type Err = String;

    fn from_str(s: &str) -> Result<ResolvConf, String> {
        let bad = || format!("Failed to parse /etc/resolv.conf mode: {s} (see --resolv-conf=help)");
        Ok(match s {
            "off" => ResolvConf::Off,
            "delete" => ResolvConf::Delete,
            "auto" => ResolvConf::Auto,
            _ => {
                let (kind, source) = s.split_once('-').ok_or_else(bad)?;
                let source = ResolvSource::ALL.into_iter().find(|x| x.name() == source).ok_or_else(bad)?;
                match kind {
                    "copy" => ResolvConf::Copy(source),
                    "replace" => ResolvConf::Replace(source),
                    "bind" => ResolvConf::Bind(source),
                    _ => return Err(bad()),
                }
            }
        })
    }
}

impl fmt::Display for ResolvConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvConf::Off => f.write_str("off"),
            ResolvConf::Copy(s) => write!(f, "copy-{}", s.name()),
            ResolvConf::Replace(s) => write!(f, "replace-{}", s.name()),
            ResolvConf::Bind(s) => write!(f, "bind-{}", s.name()),
            ResolvConf::Delete => f.write_str("delete"),
            ResolvConf::Auto => f.write_str("auto"),
        }
    }
}

/// `--timezone=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timezone {
    /// Leave the image's `/etc/localtime` alone.
    Off,
    /// Copy the host's zone file in.
    Copy,
    /// Bind the host's zone file read-only (a copy if the bind fails).
    Bind,
    /// Point the image's `/etc/localtime` at its own file of the host's zone (a bind when the
    /// image lacks that zone).
    Symlink,
    /// Remove the image's `/etc/localtime`.
    Delete,
    /// nspawn's choice: a symlink when the host's `/etc/localtime` is one, a copy when it is a
    /// file; a bind instead of either for a read-only image; a deletion when the host has none.
    #[default]
    Auto,
}

impl Timezone {
    /// Every mode's name (`--timezone=help`).
    pub const NAMES: [&'static str; 6] = ["off", "copy", "bind", "symlink", "delete", "auto"];
}

impl FromStr for Timezone {
    type Err = String;

    fn from_str(s: &str) -> Result<Timezone, String> {
        Ok(match s {
            "off" => Timezone::Off,
            "copy" => Timezone::Copy,
            "bind" => Timezone::Bind,
            "symlink" => Timezone::Symlink,
            "delete" => Timezone::Delete,
            "auto" => Timezone::Auto,
            _ => return Err(format!("Failed to parse /etc/localtime mode: {s} (see --timezone=help)")),
        })
    }
}

/// The host's `/etc/localtime`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostLocaltime {
    /// There is none.
    #[default]
    Missing,
    /// A regular file, with its contents.
    File(Vec<u8>),
    /// A symlink: the zone it names under `/usr/share/zoneinfo/` (if it points there), and the
    /// contents of the zone file.
    Link {
        /// `Europe/Berlin`.
        zone: Option<String>,
        /// What the link leads to.
        contents: Vec<u8>,
    },
}

/// What the host offers the machine's `/etc`.
#[derive(Debug, Clone, Default)]
pub struct HostEtc {
    /// The contents of each resolv.conf source the host has.
    pub resolv: Vec<(ResolvSource, Vec<u8>)>,
    /// systemd-resolved runs with its stub listener (its stub file exists).
    pub resolved: bool,
    /// The host's `/etc/localtime`.
    pub localtime: HostLocaltime,
}

impl HostEtc {
    /// Reads the host's files.
    pub fn read() -> HostEtc {
        let resolv: Vec<(ResolvSource, Vec<u8>)> = ResolvSource::ALL
            .into_iter()
            .filter_map(|s| std::fs::read(s.path()).ok().map(|c| (s, c)))
            .collect();
        let resolved = resolv.iter().any(|(s, _)| *s == ResolvSource::Stub);
        let localtime = match std::fs::read_link("/etc/localtime") {
            Ok(target) => HostLocaltime::Link {
                zone: zone_of(&target),
                contents: std::fs::read("/etc/localtime").unwrap_or_default(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HostLocaltime::Missing,
            Err(_) => std::fs::read("/etc/localtime").map_or(HostLocaltime::Missing, HostLocaltime::File),
        };
        HostEtc { resolv, resolved, localtime }
    }

    fn resolv_contents(&self, source: ResolvSource) -> Option<&[u8]> {
        self.resolv.iter().find(|(s, _)| *s == source).map(|(_, c)| c.as_slice())
    }
}

/// The zone a `/etc/localtime` link names, as nspawn reads it.
fn zone_of(target: &Path) -> Option<String> {
    let t = target.to_str()?;
    let zone = t.strip_prefix("../usr/share/zoneinfo/").or_else(|| t.strip_prefix("/usr/share/zoneinfo/"))?;
    (!zone.is_empty() && !zone.split('/').any(|c| c == ".." || c.is_empty())).then(|| zone.to_owned())
}

/// What is done to `/etc/resolv.conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvAction {
    /// Nothing.
    Off,
    /// Removed.
    Delete,
    /// Copied in (`replace`: over a symlink too).
    Copy {
        /// From where.
        source: ResolvSource,
        /// Replace any inode.
        replace: bool,
    },
    /// Bound read-only.
    Bind(ResolvSource),
}

/// What is done to `/etc/localtime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocaltimeAction {
    /// Nothing.
    Off,
    /// Removed.
    Delete,
    /// The host's zone file copied in.
    Copy,
    /// The host's zone file bound read-only.
    Bind,
    /// A link to the image's own file of this zone.
    Symlink(String),
}

/// `--resolv-conf`'s mode for this machine. `read_only`: the image is read-only and not a
/// volatile tmpfs root (nspawn's test for bind instead of copy).
pub fn resolv_action(
    mode: ResolvConf,
    private_network: bool,
    read_only: bool,
    host: &HostEtc,
) -> ResolvAction {
    let pick = |source| {
        if read_only { ResolvAction::Bind(source) } else { ResolvAction::Copy { source, replace: false } }
    };
    match mode {
        ResolvConf::Auto if private_network => ResolvAction::Off,
        ResolvConf::Auto if host.resolved => pick(ResolvSource::Stub),
        ResolvConf::Auto if host.resolv_contents(ResolvSource::Host).is_some() => pick(ResolvSource::Host),
        ResolvConf::Auto if read_only => ResolvAction::Off,
        ResolvConf::Auto => ResolvAction::Delete,
        ResolvConf::Off => ResolvAction::Off,
        ResolvConf::Delete => ResolvAction::Delete,
        ResolvConf::Copy(source) => ResolvAction::Copy { source, replace: false },
        ResolvConf::Replace(source) => ResolvAction::Copy { source, replace: true },
        ResolvConf::Bind(source) => ResolvAction::Bind(source),
    }
}

/// `--timezone`'s mode for this machine (`read_only` as for [`resolv_action`]).
pub fn localtime_action(mode: Timezone, read_only: bool, host: &HostEtc) -> LocaltimeAction {
    match (mode, &host.localtime) {
        (Timezone::Auto, HostLocaltime::Missing) if read_only => LocaltimeAction::Off,
        (Timezone::Auto, HostLocaltime::Missing) => LocaltimeAction::Delete,
        (Timezone::Auto, _) if read_only => LocaltimeAction::Bind,
        (Timezone::Auto, HostLocaltime::File(_)) => LocaltimeAction::Copy,
        (Timezone::Auto | Timezone::Symlink, HostLocaltime::Link { zone: Some(zone), .. }) => {
            LocaltimeAction::Symlink(zone.clone())
        }
        // A link elsewhere than the zone files, or no link to follow: nspawn leaves it.
        (Timezone::Auto | Timezone::Symlink, _) => LocaltimeAction::Off,
        (Timezone::Off, _) => LocaltimeAction::Off,
        (Timezone::Copy, _) => LocaltimeAction::Copy,
        (Timezone::Bind, _) => LocaltimeAction::Bind,
        (Timezone::Delete, _) => LocaltimeAction::Delete,
    }
}

/// Both actions for a machine.
pub fn actions(spec: &super::spec::LaunchSpec, host: &HostEtc) -> (ResolvAction, LocaltimeAction) {
    use crate::network::NetworkMode;
    // nspawn's "private network": any network of the machine's own but a namespace it joins.
    let private_network =
        !matches!(spec.network.effective_mode(), NetworkMode::Host | NetworkMode::NamespacePath(_));
    // nspawn binds into a read-only image and copies into a writable one. Into an ephemeral
    // overlay mctl binds as well (nspawn copies into its snapshot): a file copied there would
    // land in `mctl commit`'s image, the host's DNS servers and zone with it.
    let read_only = (spec.read_only || spec.root_overlay()) && spec.volatile != super::spec::Volatile::Yes;
    (
        resolv_action(spec.resolv_conf, private_network, read_only, host),
        localtime_action(spec.timezone, read_only, host),
    )
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// The steps (after the pivot, in the machine's root) for both files. The host files a bind
/// needs are the trees [`TreeId::ResolvConf`] and [`TreeId::Localtime`].
pub fn steps(resolv: ResolvAction, localtime: &LocaltimeAction, host: &HostEtc) -> Vec<Step> {
    let resolv_conf = p("/etc/resolv.conf");
    let copy = |path: &Path, contents: Option<&[u8]>, replace: bool| {
        contents.map(|c| Step::PlaceFile {
            path: path.to_owned(),
            contents: c.to_vec(),
            mode: 0o644,
            replace,
        })
    };
    let mut out = Vec::new();
    match resolv {
        ResolvAction::Off => {}
        ResolvAction::Delete => out.push(Step::Try(vec![Step::Remove { path: resolv_conf }])),
        ResolvAction::Copy { source, replace } => {
            out.extend(copy(&resolv_conf, host.resolv_contents(source), replace).map(|s| Step::Try(vec![s])));
        }
        ResolvAction::Bind(source) => {
            let bind =
                Step::Attach { tree: TreeId::ResolvConf, target: resolv_conf.clone(), only_if_exists: false };
            out.push(Step::Try(
                std::iter::once(bind)
                    .chain(copy(&resolv_conf, host.resolv_contents(source), false))
                    .collect(),
            ));
        }
    }
    let localtime_path = p("/etc/localtime");
    let zone_contents = match &host.localtime {
        HostLocaltime::Missing => None,
        HostLocaltime::File(c) | HostLocaltime::Link { contents: c, .. } => Some(c.as_slice()),
    };
    let bind = || {
        Step::Try(
            std::iter::once(Step::Attach {
                tree: TreeId::Localtime,
                target: localtime_path.clone(),
                only_if_exists: false,
            })
            .chain(copy(&localtime_path, zone_contents, true))
            .collect(),
        )
    };
    match localtime {
        LocaltimeAction::Off => {}
        LocaltimeAction::Delete => out.push(Step::Try(vec![Step::Remove { path: localtime_path }])),
        LocaltimeAction::Copy => {
            out.extend(copy(&localtime_path, zone_contents, true).map(|s| Step::Try(vec![s])))
        }
        LocaltimeAction::Bind => out.push(bind()),
        LocaltimeAction::Symlink(zone) => out.push(Step::IfExists {
            path: Path::new("/usr/share/zoneinfo").join(zone),
            then: vec![Step::Try(vec![Step::ReplaceSymlink {
                target: Path::new("../usr/share/zoneinfo").join(zone),
                link: localtime_path.clone(),
            }])],
            otherwise: vec![bind()],
        }),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(resolv: &[ResolvSource], localtime: HostLocaltime) -> HostEtc {
        HostEtc {
            resolv: resolv.iter().map(|s| (*s, b"nameserver 192.0.2.1\n".to_vec())).collect(),
            resolved: resolv.contains(&ResolvSource::Stub),
            localtime,
        }
    }

    #[test]
    fn modes_parse_as_nspawn_names_them() {
        for name in ResolvConf::names() {
            assert_eq!(name.parse::<ResolvConf>().unwrap().to_string(), name);
        }
        assert_eq!(ResolvConf::names().len(), 15);
        assert_eq!("bind-uplink".parse::<ResolvConf>(), Ok(ResolvConf::Bind(ResolvSource::Uplink)));
        for bad in ["", "copy", "copy-", "bind-hosts", "on", "Auto"] {
            let e = bad.parse::<ResolvConf>().unwrap_err();
            assert!(e.starts_with("Failed to parse /etc/resolv.conf mode"), "{e}");
        }
        for name in Timezone::NAMES {
            name.parse::<Timezone>().unwrap();
        }
        assert!("utc".parse::<Timezone>().unwrap_err().contains("/etc/localtime mode: utc"));
    }

    #[test]
    fn auto_decides_as_nspawn_252() {
        let plain = host(&[ResolvSource::Host], HostLocaltime::Missing);
        let auto = ResolvConf::Auto;
        assert_eq!(resolv_action(auto, true, false, &plain), ResolvAction::Off, "private network");
        assert_eq!(
            resolv_action(auto, false, false, &plain),
            ResolvAction::Copy { source: ResolvSource::Host, replace: false }
        );
        assert_eq!(resolv_action(auto, false, true, &plain), ResolvAction::Bind(ResolvSource::Host));
        let resolved = host(&[ResolvSource::Host, ResolvSource::Stub], HostLocaltime::Missing);
        assert_eq!(resolv_action(auto, false, true, &resolved), ResolvAction::Bind(ResolvSource::Stub));
        let none = host(&[], HostLocaltime::Missing);
        assert_eq!(resolv_action(auto, false, false, &none), ResolvAction::Delete);
        assert_eq!(resolv_action(auto, false, true, &none), ResolvAction::Off);

        let link = HostLocaltime::Link { zone: Some("Etc/UTC".into()), contents: b"TZif".to_vec() };
        let linked = host(&[], link);
        assert_eq!(
            localtime_action(Timezone::Auto, false, &linked),
            LocaltimeAction::Symlink("Etc/UTC".into())
        );
        assert_eq!(localtime_action(Timezone::Auto, true, &linked), LocaltimeAction::Bind);
        let file = host(&[], HostLocaltime::File(b"TZif".to_vec()));
        assert_eq!(localtime_action(Timezone::Auto, false, &file), LocaltimeAction::Copy);
        assert_eq!(localtime_action(Timezone::Symlink, false, &file), LocaltimeAction::Off);
        assert_eq!(localtime_action(Timezone::Auto, false, &none), LocaltimeAction::Delete);
        assert_eq!(localtime_action(Timezone::Auto, true, &none), LocaltimeAction::Off);
        assert_eq!(zone_of(Path::new("/usr/share/zoneinfo/Europe/Berlin")).as_deref(), Some("Europe/Berlin"));
        assert_eq!(zone_of(Path::new("../usr/share/zoneinfo/../../etc/shadow")), None);
        assert_eq!(zone_of(Path::new("/etc/tz")), None);
    }

    #[test]
    fn a_symlinked_zone_falls_back_to_a_bind_where_the_image_lacks_it() {
        let link = HostLocaltime::Link { zone: Some("Etc/UTC".into()), contents: b"TZif".to_vec() };
        let h = host(&[], link);
        let steps = steps(ResolvAction::Off, &LocaltimeAction::Symlink("Etc/UTC".into()), &h);
        let [Step::IfExists { path, then, otherwise }] = &steps[..] else { panic!("{steps:?}") };
        assert_eq!(path, Path::new("/usr/share/zoneinfo/Etc/UTC"));
        assert!(matches!(&then[0], Step::Try(s) if matches!(&s[0], Step::ReplaceSymlink { target, .. }
            if target == Path::new("../usr/share/zoneinfo/Etc/UTC"))));
        assert!(
            matches!(&otherwise[0], Step::Try(s) if matches!(s[0], Step::Attach { tree: TreeId::Localtime, .. })
            && matches!(&s[1], Step::PlaceFile { replace: true, .. }))
        );
    }
}
