//! os-release files (`os-release(5)`): where they are, how they read, what nspawn passes on.

/// Where an os-release file may be, in the order systemd reads them (host and guest alike).
pub const PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// The host's os-release, read from the first of [`PATHS`] that exists.
pub fn host() -> Option<String> {
    PATHS.iter().find_map(|p| std::fs::read_to_string(p).ok())
}

/// The `container_host_*` variables nspawn passes: four os-release keys of the host.
pub fn host_os_env(os_release: &str) -> Vec<(String, String)> {
    const KEYS: [&str; 4] = ["ID", "VERSION_ID", "BUILD_ID", "VARIANT_ID"];
    parse_os_release(os_release)
        .into_iter()
        .filter(|(k, _)| KEYS.contains(&k.as_str()))
        .map(|(k, v)| (format!("container_host_{}", k.to_ascii_lowercase()), v))
        .collect()
}

/// Parses os-release `KEY=value` lines (quotes removed).
pub fn parse_os_release(s: &str) -> Vec<(String, String)> {
    s.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.replace("\\\"", "\"")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_env_from_os_release() {
        let env = host_os_env("PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\nVERSION_ID=\"12\"\n");
        assert_eq!(
            env,
            vec![
                ("container_host_id".to_owned(), "debian".to_owned()),
                ("container_host_version_id".to_owned(), "12".to_owned())
            ]
        );
    }
}
