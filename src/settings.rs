//! Per-machine settings files, `NAME.mctl`, in the format and with the precedence of
//! systemd-nspawn's `.nspawn` files: `[Exec]`, `[Files]` and `[Network]` with nspawn's key
//! names, plus `[Resources]` with systemd's resource properties. The first of
//! `/etc/mctl/NAME.mctl`, `/run/mctl/NAME.mctl` is used (trusted); failing those, a `NAME.mctl`
//! beside the image (untrusted: settings that could grant privileges are ignored).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::cgroups::resources::Property;
use crate::launcher::attributes;

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read settings file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A line that is wrong.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// What a settings file says. Values are checked when parsed (so errors name the line) and
/// kept as the command line would spell them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The file.
    pub path: PathBuf,
    /// Whether it may grant privileges (it is in a settings directory, or `--settings=trusted`).
    pub trusted: bool,
    /// `[Exec] Boot=`.
    pub boot: Option<bool>,
    /// `[Exec] Parameters=`: init's arguments, or the command.
    pub parameters: Option<Vec<String>>,
    /// `[Exec] Environment=`.
    pub environment: Vec<String>,
    /// `[Exec] User=`.
    pub user: Option<String>,
    /// `[Exec] WorkingDirectory=`.
    pub working_directory: Option<PathBuf>,
    /// `[Exec] Capability=`.
    pub capability: Vec<String>,
    /// `[Exec] DropCapability=`.
    pub drop_capability: Vec<String>,
    /// `[Exec] AmbientCapability=`.
    pub ambient_capability: Vec<String>,
    /// `[Exec] LimitNOFILE=` and the other limits, as `--rlimit` values (`NOFILE=1024:4096`).
    pub rlimits: Vec<String>,
    /// `[Exec] SetCredential=`.
    pub set_credential: Vec<String>,
    /// `[Exec] LoadCredential=`.
    pub load_credential: Vec<String>,
    /// `[Exec] SuppressSync=`.
    pub suppress_sync: Option<bool>,
    /// `[Exec] OOMScoreAdjust=`.
    pub oom_score_adjust: Option<String>,
    /// `[Exec] CPUAffinity=`.
    pub cpu_affinity: Option<String>,
    /// `[Exec] Personality=`.
    pub personality: Option<String>,
    /// `[Exec] KillSignal=`.
    pub kill_signal: Option<String>,
    /// `[Exec] Hostname=`.
    pub hostname: Option<String>,
    /// `[Exec] PivotRoot=`.
    pub pivot_root: Option<String>,
    /// `[Exec] LinkJournal=`.
    pub link_journal: Option<String>,
    /// `[Exec] ResolvConf=`.
    pub resolv_conf: Option<String>,
    /// `[Exec] Timezone=`.
    pub timezone: Option<String>,
    /// `[Exec] PrivateUsers=`.
    pub private_users: Option<crate::userns::PrivateUsers>,
    /// `[Exec] NotifyReady=`.
    pub notify_ready: Option<bool>,
    /// `[Exec] SystemCallFilter=`.
    pub system_call_filter: Vec<String>,
    /// `[Exec] NoNewPrivileges=`.
    pub no_new_privileges: Option<bool>,
    /// `[Exec] MachineID=`.
    pub machine_id: Option<uuid::Uuid>,
    /// `[Exec] ProcessTwo=`.
    pub process_two: Option<bool>,
    /// `[Exec] Ephemeral=`.
    pub ephemeral: Option<bool>,
    /// `[Files] ReadOnly=`.
    pub read_only: Option<bool>,
    /// `[Files] Volatile=`.
    pub volatile: Option<crate::launcher::spec::Volatile>,
    /// `[Files] Bind=`.
    pub bind: Vec<String>,
    /// `[Files] BindReadOnly=`.
    pub bind_read_only: Vec<String>,
    /// `[Files] TemporaryFileSystem=`.
    pub tmpfs: Vec<String>,
    /// `[Files] Inaccessible=`.
    pub inaccessible: Vec<PathBuf>,
    /// `[Files] BindUser=`.
    pub bind_user: Vec<String>,
    /// `[Files] Overlay=`.
    pub overlay: Vec<String>,
    /// `[Files] OverlayReadOnly=`.
    pub overlay_read_only: Vec<String>,
    /// `[Files] PrivateUsersOwnership=`.
    pub private_users_ownership: Option<crate::userns::Ownership>,
    /// `[Network] Private=`.
    pub private_network: Option<bool>,
    /// `[Network] VirtualEthernet=`.
    pub virtual_ethernet: Option<bool>,
    /// `[Network] Interface=`.
    pub interface: Vec<String>,
    /// `[Network] MACVLAN=`.
    pub macvlan: Vec<String>,
    /// `[Network] IPVLAN=`.
    pub ipvlan: Vec<String>,
    /// `[Network] VirtualEthernetExtra=`.
    pub virtual_ethernet_extra: Vec<String>,
    /// `[Network] Bridge=`.
    pub bridge: Option<String>,
    /// `[Network] Zone=`.
    pub zone: Option<String>,
    /// `[Network] Port=`.
    pub port: Vec<String>,
    /// `[Resources]`: `NAME=VALUE` assignments, in order.
    pub resources: Vec<String>,
    /// Keys of an untrusted file that were ignored.
    pub ignored: Vec<String>,
}

/// Keys nspawn knows that mctl does not carry out (refused rather than silently ignored).
const NSPAWN_ONLY: [&str; 1] = ["CredentialSet"];

/// Keys an untrusted file may not set: they grant capabilities or system calls, reach host
/// files or host network interfaces, or weaken the sandbox.
const PRIVILEGED: [&str; 24] = [
    "LoadCredential",
    // It maps a host user into the machine and binds its home directory.
    "BindUser",
    // It makes links and directories in the host's /var/log/journal.
    "LinkJournal",
    "Inaccessible",
    "Capability",
    "AmbientCapability",
    "OOMScoreAdjust",
    "SystemCallFilter",
    "PrivateUsers",
    "NoNewPrivileges",
    "Bind",
    "BindReadOnly",
    "TemporaryFileSystem",
    "Overlay",
    "OverlayReadOnly",
    "PrivateUsersOwnership",
    "Private",
    "VirtualEthernet",
    "Interface",
    "MACVLAN",
    "IPVLAN",
    "VirtualEthernetExtra",
    "Bridge",
    "Zone",
];

/// Finds the settings file of machine `name`: `dirs` in order (trusted), then beside the image
/// (`image_root`'s parent directory; untrusted).
pub fn find(name: &str, dirs: &[&Path], image_root: &Path) -> Option<(PathBuf, bool)> {
    let file = format!("{name}.mctl");
    for d in dirs {
        let p = d.join(&file);
        if p.is_file() {
            return Some((p, true));
        }
    }
    let beside = image_root.parent()?.join(&file);
    beside.is_file().then_some((beside, false))
}

/// systemd's booleans.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// Splits `Parameters=` as systemd does: whitespace, with single or double quotes.
fn split_words(v: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') => cur.push(chars.next()?),
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.push(chars.next()?);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}

impl Settings {
    /// Reads and checks a settings file.
    pub fn load(path: &Path, trusted: bool) -> Result<Settings, SettingsError> {
        let text = fs::read_to_string(path)
            .map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
        Settings::parse(path, &text, trusted)
    }

    /// Checks a settings file's text; `path` is for messages.
    pub fn parse(path: &Path, text: &str, trusted: bool) -> Result<Settings, SettingsError> {
        let mut s = Settings { path: path.to_owned(), trusted, ..Settings::default() };
        let mut section: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |message: String| SettingsError::Line { path: path.to_owned(), line: i + 1, message };
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                if !matches!(name, "Exec" | "Files" | "Network" | "Resources") {
                    return Err(err(format!(
                        "unknown section [{name}]: expected [Exec], [Files], [Network] or [Resources]"
                    )));
                }
                section = Some(name.to_owned());
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(format!("'{line}' is not KEY=VALUE")));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(sec) = section.as_deref() else {
                return Err(err(format!("{key}= is outside any section (start with [Exec], [Files], ...)")));
            };
            if !trusted && (PRIVILEGED.contains(&key) || sec == "Network") {
                s.ignored.push(key.to_owned());
                continue;
            }
            s.set(sec, key, value).map_err(|m| err(format!("{key}={value}: {m}")))?;
        }
        Ok(s)
    }

    fn set(&mut self, section: &str, key: &str, value: &str) -> Result<(), String> {
        let boolean = || parse_bool(value).ok_or_else(|| "expected a boolean (yes or no)".to_owned());
        let some = || (!value.is_empty()).then(|| value.to_owned());
        match (section, key) {
            ("Exec", "Boot") => self.boot = Some(boolean()?),
            ("Exec", "Parameters") => {
                self.parameters = Some(split_words(value).ok_or("unbalanced quotes")?);
            }
            ("Exec", "Environment") => {
                crate::launcher::spec::parse_setenv(value).map_err(|e| e.to_string())?;
                self.environment.push(value.to_owned());
            }
            ("Exec", "User") => self.user = some(),
            ("Exec", "WorkingDirectory") => {
                if !value.starts_with('/') {
                    return Err("expected an absolute path".into());
                }
                self.working_directory = Some(value.into());
            }
            ("Exec", "Capability" | "DropCapability" | "AmbientCapability") => {
                // nspawn's lists are space-separated; the command line's are comma-separated.
                let list = value.split_whitespace().collect::<Vec<_>>().join(",");
                crate::launcher::security::parse_caps(&list).map_err(|e| e.to_string())?;
                match key {
                    "Capability" => self.capability.push(list),
                    "DropCapability" => self.drop_capability.push(list),
                    _ => self.ambient_capability.push(list),
                }
            }
            ("Exec", k) if k.starts_with("Limit") && attributes::rlimit_setting_names().any(|n| n == k) => {
                let arg = format!("{}={value}", &k["Limit".len()..]);
                attributes::Rlimit::parse(&arg).map_err(|e| e.expected)?;
                self.rlimits.push(arg);
            }
            ("Exec", "SetCredential") => {
                crate::launcher::credentials::parse_set(value).map_err(|e| e.to_string())?;
                self.set_credential.push(value.to_owned());
            }
            ("Exec", "LoadCredential") => {
                crate::launcher::credentials::parse_load(value).map_err(|e| e.to_string())?;
                self.load_credential.push(value.to_owned());
            }
            ("Exec", "SuppressSync") => self.suppress_sync = Some(boolean()?),
            ("Exec", "OOMScoreAdjust") => {
                attributes::parse_oom_score_adjust(value).map_err(|e| e.expected)?;
                self.oom_score_adjust = Some(value.to_owned());
            }
            ("Exec", "CPUAffinity") => {
                attributes::parse_cpu_affinity(value).map_err(|e| e.expected)?;
                self.cpu_affinity = Some(value.to_owned());
            }
            ("Exec", "Personality") => {
                attributes::Personality::parse(value).map_err(|e| e.expected)?;
                self.personality = Some(value.to_owned());
            }
            ("Exec", "KillSignal") => {
                value.parse::<crate::signals::SignalNumber>().map_err(|e| e.to_string())?;
                self.kill_signal = Some(value.to_owned());
            }
            ("Exec", "PivotRoot") => self.pivot_root = Some(value.to_owned()),
            ("Exec", "LinkJournal") => {
                value.parse::<crate::launcher::journal::LinkJournal>()?;
                self.link_journal = Some(value.to_owned());
            }
            ("Exec", "ResolvConf") => {
                value.parse::<crate::launcher::host_etc::ResolvConf>()?;
                self.resolv_conf = Some(value.to_owned());
            }
            ("Exec", "Timezone") => {
                value.parse::<crate::launcher::host_etc::Timezone>()?;
                self.timezone = Some(value.to_owned());
            }
            ("Exec", "Hostname") => {
                crate::names::validate(value).map_err(|e| e.to_string())?;
                self.hostname = Some(value.to_owned());
            }
            ("Exec", "PrivateUsers") => {
                // nspawn's booleans: yes is "pick"'s neighbour "yes", no is no.
                let v = match parse_bool(value) {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => value,
                };
                self.private_users = Some(v.parse().map_err(|e: crate::userns::ParseError| e.to_string())?);
            }
            ("Exec", "NotifyReady") => self.notify_ready = Some(boolean()?),
            ("Exec", "SystemCallFilter") => {
                crate::seccomp::FilterChanges::default().add_option(value).map_err(|e| e.to_string())?;
                self.system_call_filter.push(value.to_owned());
            }
            ("Exec", "NoNewPrivileges") => self.no_new_privileges = Some(boolean()?),
            ("Exec", "MachineID") => {
                self.machine_id = Some(value.parse().map_err(|_| "expected a 128-bit id (32 hex digits)")?);
            }
            ("Exec", "ProcessTwo") => self.process_two = Some(boolean()?),
            ("Exec", "Ephemeral") => self.ephemeral = Some(boolean()?),
            ("Files", "ReadOnly") => self.read_only = Some(boolean()?),
            ("Files", "Volatile") => {
                let v = match parse_bool(value) {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => value,
                };
                self.volatile = Some(
                    crate::launcher::spec::Volatile::from_str(v, false)
                        .map_err(|_| "expected yes, no, state or overlay")?,
                );
            }
            ("Files", "Bind") | ("Files", "BindReadOnly") => {
                let ro = key == "BindReadOnly";
                let b = crate::launcher::spec::parse_bind(value, ro, Path::new("/"))
                    .map_err(|e| e.to_string())?;
                if !value.starts_with('/') || !b.source.is_absolute() {
                    return Err("expected an absolute source path".into());
                }
                if ro { self.bind_read_only.push(value.to_owned()) } else { self.bind.push(value.to_owned()) }
            }
            ("Files", "BindUser") => self.bind_user.extend(value.split_whitespace().map(str::to_owned)),
            ("Files", "Inaccessible") => {
                if !value.starts_with('/') || value == "/" {
                    return Err("expected an absolute path below /".into());
                }
                self.inaccessible.push(value.into());
            }
            ("Files", "TemporaryFileSystem") => {
                crate::launcher::spec::parse_tmpfs(value).map_err(|e| e.to_string())?;
                self.tmpfs.push(value.to_owned());
            }
            ("Files", "Overlay") | ("Files", "OverlayReadOnly") => {
                let ro = key == "OverlayReadOnly";
                crate::launcher::spec::parse_overlay(value, ro).map_err(|e| e.to_string())?;
                if ro {
                    self.overlay_read_only.push(value.to_owned())
                } else {
                    self.overlay.push(value.to_owned())
                }
            }
            ("Files", "PrivateUsersOwnership") => {
                self.private_users_ownership = Some(
                    crate::userns::Ownership::from_str(value, false)
                        .map_err(|_| "expected off, chown, map or auto")?,
                );
            }
            ("Network", "Private") => self.private_network = Some(boolean()?),
            ("Network", "VirtualEthernet") => self.virtual_ethernet = Some(boolean()?),
            ("Network", "Interface") => self.interface.extend(value.split_whitespace().map(str::to_owned)),
            ("Network", "MACVLAN") => self.macvlan.extend(value.split_whitespace().map(str::to_owned)),
            ("Network", "IPVLAN") => self.ipvlan.extend(value.split_whitespace().map(str::to_owned)),
            ("Network", "VirtualEthernetExtra") => {
                crate::network::spec::parse_veth_extra(value).map_err(|e| e.to_string())?;
                self.virtual_ethernet_extra.push(value.to_owned());
            }
            ("Network", "Bridge") => self.bridge = some(),
            ("Network", "Zone") => self.zone = some(),
            ("Network", "Port") => {
                crate::network::parse_port(value).map_err(|e| e.to_string())?;
                self.port.push(value.to_owned());
            }
            ("Resources", _) => {
                Property::parse(&format!("{key}={value}")).map_err(|e| match e {
                    crate::cgroups::resources::ResourceError::Invalid { expected, .. } => expected.to_owned(),
                    other => other.to_string(),
                })?;
                self.resources.push(format!("{key}={value}"));
            }
            (_, k) if NSPAWN_ONLY.contains(&k) => {
                return Err(format!("nspawn's {k}= is not supported by mctl; remove it"));
            }
            (sec, k) => return Err(format!("unknown key {k} in [{sec}]")),
        }
        Ok(())
    }
}

/// Records resource properties in the `[Resources]` section of a settings file (made if
/// missing), replacing earlier values of the same settings and keeping everything else. The
/// file is replaced whole, so a failure leaves the old one.
pub fn record_resources(path: &Path, props: &[Property]) -> io::Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<String> = old.lines().map(str::to_owned).collect();
    let header = lines.iter().position(|l| l.trim() == "[Resources]");
    let (start, mut end) = match header {
        Some(h) => {
            let end = lines[h + 1..]
                .iter()
                .position(|l| l.trim().starts_with('['))
                .map_or(lines.len(), |e| h + 1 + e);
            (h + 1, end)
        }
        None => {
            if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                lines.push(String::new());
            }
            lines.push("[Resources]".into());
            (lines.len(), lines.len())
        }
    };
    for p in props {
        let replaced = |l: &String| Property::parse(l.trim()).is_ok_and(|q| q.same_setting(p));
        let mut k = start;
        while k < end {
            if replaced(&lines[k]) {
                lines.remove(k);
                end -= 1;
            } else {
                k += 1;
            }
        }
        // After the section's last setting, before trailing blank lines.
        let mut at = end;
        while at > start && lines[at - 1].trim().is_empty() {
            at -= 1;
        }
        lines.insert(at, p.to_string());
        end += 1;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".#{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut text = lines.join("\n");
    text.push('\n');
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# a web machine
[Exec]
Boot=yes
Environment=MODE=prod
Parameters=--log-level=debug 'systemd.unit=multi-user.target'
PrivateUsers=pick
KillSignal=SIGTERM
LimitNOFILE=1024:4096
OOMScoreAdjust=100
CPUAffinity=0
AmbientCapability=CAP_NET_RAW CAP_CHOWN
ResolvConf=bind-host
Timezone=off

[Files]
BindReadOnly=/srv/www:/var/www
BindUser=alice bob
Volatile=state
TemporaryFileSystem=/scratch:size=10M

[Network]
VirtualEthernet=yes
VirtualEthernetExtra=vx-web:data0
Port=tcp:8080:80

[Resources]
MemoryMax=512M
CPUQuota=50%
";

    #[test]
    fn reads_nspawn_keys_and_resources() {
        let s = Settings::parse(Path::new("web.mctl"), FILE, true).unwrap();
        assert_eq!(s.boot, Some(true));
        assert_eq!(s.environment, ["MODE=prod"]);
        assert_eq!(
            s.parameters.as_deref(),
            Some(&["--log-level=debug".to_owned(), "systemd.unit=multi-user.target".to_owned()][..])
        );
        assert_eq!(s.private_users, Some(crate::userns::PrivateUsers::Pick));
        assert_eq!(s.bind_read_only, ["/srv/www:/var/www"]);
        assert_eq!(s.bind_user, ["alice", "bob"]);
        assert_eq!(s.volatile, Some(crate::launcher::spec::Volatile::State));
        assert_eq!(s.virtual_ethernet, Some(true));
        assert_eq!(s.port, ["tcp:8080:80"]);
        assert_eq!(s.virtual_ethernet_extra, ["vx-web:data0"]);
        assert_eq!(s.resources, ["MemoryMax=512M", "CPUQuota=50%"]);
        assert_eq!(s.rlimits, ["NOFILE=1024:4096"]);
        assert_eq!((s.oom_score_adjust.as_deref(), s.cpu_affinity.as_deref()), (Some("100"), Some("0")));
        assert_eq!(s.ambient_capability, ["CAP_NET_RAW,CAP_CHOWN"]);
        assert_eq!((s.resolv_conf.as_deref(), s.timezone.as_deref()), (Some("bind-host"), Some("off")));
        assert!(s.ignored.is_empty());
    }

    #[test]
    fn an_untrusted_file_grants_nothing() {
        let s = Settings::parse(Path::new("/var/lib/machines/web.mctl"), FILE, false).unwrap();
        assert_eq!(s.private_users, None);
        assert!(s.bind_read_only.is_empty() && s.port.is_empty() && s.virtual_ethernet.is_none());
        assert_eq!(
            s.ignored,
            [
                "PrivateUsers",
                "OOMScoreAdjust",
                "AmbientCapability",
                "BindReadOnly",
                "BindUser",
                "TemporaryFileSystem",
                "VirtualEthernet",
                "VirtualEthernetExtra",
                "Port"
            ]
        );
        // Limits only take away: they are kept.
        assert_eq!(s.resources, ["MemoryMax=512M", "CPUQuota=50%"]);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        for (text, want) in [
            ("[Exec]\nBoot=maybe\n", "web.mctl:2: Boot=maybe: expected a boolean"),
            ("[Resources]\n\nMemoryMax=lots\n", "web.mctl:3: MemoryMax=lots: expected bytes"),
            ("[Exec]\nFrobnicate=1\n", "web.mctl:2: Frobnicate=1: unknown key Frobnicate in [Exec]"),
            (
                "[Exec]\nLimitNOFILE=9:1\n",
                "web.mctl:2: LimitNOFILE=9:1: the soft limit exceeds the hard limit",
            ),
            (
                "[Exec]\nCredentialSet=a\n",
                "web.mctl:2: CredentialSet=a: nspawn's CredentialSet= is not supported",
            ),
            (
                "[Exec]\nLinkJournal=maybe\n",
                "web.mctl:2: LinkJournal=maybe: Failed to parse link journal mode maybe",
            ),
            ("[Exec]\nTimezone=utc\n", "web.mctl:2: Timezone=utc: Failed to parse /etc/localtime mode: utc"),
            ("[Execute]\n", "web.mctl:1: unknown section [Execute]"),
            ("[Network]\nVirtualEthernetExtra=a:b:c\n", "web.mctl:2: VirtualEthernetExtra=a:b:c: invalid"),
            ("Boot=yes\n", "web.mctl:1: Boot= is outside any section"),
            ("[Files]\nBind=relative:/x\n", "web.mctl:2: Bind=relative:/x: "),
            ("[Exec]\nParameters='open\n", "unbalanced quotes"),
            ("[Resources]\nTasksMax\n", "web.mctl:2: 'TasksMax' is not KEY=VALUE"),
        ] {
            let e = Settings::parse(Path::new("web.mctl"), text, true).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn finds_the_first_trusted_file_then_the_one_beside_the_image() {
        let t = tempfile::tempdir().unwrap();
        let (etc, run, store) = (t.path().join("etc"), t.path().join("run"), t.path().join("store"));
        for d in [&etc, &run, &store.join("web")] {
            fs::create_dir_all(d).unwrap();
        }
        let image = store.join("web");
        assert_eq!(find("web", &[&etc, &run], &image), None);
        fs::write(store.join("web.mctl"), "").unwrap();
        assert_eq!(find("web", &[&etc, &run], &image), Some((store.join("web.mctl"), false)));
        fs::write(run.join("web.mctl"), "").unwrap();
        assert_eq!(find("web", &[&etc, &run], &image), Some((run.join("web.mctl"), true)));
        fs::write(etc.join("web.mctl"), "").unwrap();
        assert_eq!(find("web", &[&etc, &run], &image), Some((etc.join("web.mctl"), true)));
    }

    #[test]
    fn records_resources_keeping_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("etc/web.mctl");
        let p = |s: &str| Property::parse(s).unwrap();
        record_resources(&f, &[p("MemoryMax=1G")]).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "[Resources]\nMemoryMax=1073741824\n");
        fs::write(
            &f,
            "[Exec]\nBoot=yes\n\n[Resources]\nMemoryMax=512M\nTasksMax=10\n\n[Network]\nPrivate=yes\n",
        )
        .unwrap();
        record_resources(&f, &[p("MemoryMax=64M"), p("CPUQuota=20%")]).unwrap();
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            "[Exec]\nBoot=yes\n\n[Resources]\nTasksMax=10\nMemoryMax=67108864\nCPUQuota=20%\n\n[Network]\nPrivate=yes\n"
        );
        let s = Settings::load(&f, true).unwrap();
        assert_eq!(s.resources, ["TasksMax=10", "MemoryMax=67108864", "CPUQuota=20%"]);
        assert_eq!(fs::read_dir(t.path().join("etc")).unwrap().count(), 1, "no temporary file left");
    }
}
