//! The machine record the manager keeps, and its on-disk form (machined's state file format).

use std::fmt;

/// What kind of machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A container.
    Container,
    /// A virtual machine.
    Vm,
    /// The host itself (the `.host` pseudo-machine; never registered).
    Host,
}

impl Class {
    /// The D-Bus string.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Container => "container",
            Class::Vm => "vm",
            Class::Host => "host",
        }
    }

    /// Parses machined's class strings; only registrable classes are accepted.
    pub fn parse(s: &str) -> Option<Class> {
        match s {
            "container" => Some(Class::Container),
            "vm" => Some(Class::Vm),
            _ => None,
        }
    }
}

/// Lifecycle state, as machined reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Registered and running.
    Running,
    /// Termination was requested.
    Closing,
}

impl State {
    /// The D-Bus string.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Closing => "closing",
        }
    }
}

/// One registered machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Name (hostname rules).
    pub name: String,
    /// 128-bit id, if known.
    pub id: Option<[u8; 16]>,
    /// CLOCK_REALTIME µs at registration.
    pub timestamp: u64,
    /// CLOCK_MONOTONIC µs at registration.
    pub timestamp_monotonic: u64,
    /// Who registered it ("mctl").
    pub service: String,
    /// systemd unit the machine runs in, or "".
    pub unit: String,
    /// Host pid of the machine's PID 1.
    pub leader: u32,
    /// The leader's start time (clock ticks since boot), to tell it from a reused pid.
    pub leader_start: u64,
    /// Container or VM, as registered (`CLASS=` in the state file).
    pub class: Class,
    /// Root directory on the host, or "".
    pub root_directory: String,
    /// Host-side interface indices.
    pub netif: Vec<i32>,
    /// `running`, or `closing` once termination was requested (`STATE=` in the state file).
    pub state: State,
    /// The leader's cgroup2 path at registration (the machine's payload cgroup).
    pub cgroup: String,
}

impl Machine {
    /// The state file's contents.
    pub fn to_state_file(&self) -> String {
        let mut s = String::from("# This is private data. Do not parse.\n");
        let mut kv = |k: &str, v: &str| {
            if !v.is_empty() {
                s.push_str(&format!("{k}={}\n", escape(v)));
            }
        };
        kv("NAME", &self.name);
        kv("SCOPE", &self.unit);
        kv("SERVICE", &self.service);
        kv("ROOT", &self.root_directory);
        kv("ID", &self.id.map(hex).unwrap_or_default());
        kv("LEADER", &self.leader.to_string());
        kv("LEADER_START", &self.leader_start.to_string());
        kv("CLASS", self.class.as_str());
        kv("REALTIME", &self.timestamp.to_string());
        kv("MONOTONIC", &self.timestamp_monotonic.to_string());
        kv("CGROUP", &self.cgroup);
        kv("STATE", self.state.as_str());
        let netif: Vec<String> = self.netif.iter().map(i32::to_string).collect();
        kv("NETIF", &netif.join(" "));
        s
    }

    /// Parses a state file; `None` when it lacks what a machine needs.
    pub fn from_state_file(text: &str) -> Option<Machine> {
        let get = |key: &str| -> Option<String> {
            text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(unescape))
        };
        Some(Machine {
            name: get("NAME")?,
            id: get("ID").and_then(|h| parse_hex_id(&h)),
            timestamp: get("REALTIME").and_then(|v| v.parse().ok()).unwrap_or(0),
            timestamp_monotonic: get("MONOTONIC").and_then(|v| v.parse().ok()).unwrap_or(0),
            service: get("SERVICE").unwrap_or_default(),
            unit: get("SCOPE").unwrap_or_default(),
            leader: get("LEADER")?.parse().ok()?,
            leader_start: get("LEADER_START").and_then(|v| v.parse().ok()).unwrap_or(0),
            class: Class::parse(&get("CLASS")?)?,
            root_directory: get("ROOT").unwrap_or_default(),
            netif: get("NETIF")
                .map(|v| v.split_whitespace().filter_map(|i| i.parse().ok()).collect())
                .unwrap_or_default(),
            state: if get("STATE").as_deref() == Some("closing") { State::Closing } else { State::Running },
            cgroup: get("CGROUP").unwrap_or_default(),
        })
    }
}

/// 32 lowercase hex digits.
pub fn hex(id: [u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn parse_hex_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// C-style escaping of newlines and backslashes, so every value stays on one line.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Machine {
        Machine {
            name: "probe-1".into(),
            id: Some([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
            timestamp: 1795998885566938,
            timestamp_monotonic: 646729502,
            service: "mctl".into(),
            unit: "".into(),
            leader: 23239,
            leader_start: 4242,
            class: Class::Container,
            root_directory: "/var/lib/machines/with\nnewline".into(),
            netif: vec![1, 7],
            state: State::Running,
            cgroup: "/mctl/probe-1/payload".into(),
        }
    }

    #[test]
    fn state_file_round_trip() {
        let m = sample();
        let text = m.to_state_file();
        assert!(text.starts_with("# This is private data. Do not parse.\n"));
        assert!(text.contains("ID=0102030405060708090a0b0c0d0e0f10\n"));
        assert!(text.contains("NETIF=1 7\n"));
        assert!(!text.contains("SCOPE="), "empty values are left out");
        assert_eq!(Machine::from_state_file(&text), Some(m));
        assert_eq!(Machine::from_state_file("NAME=x\n"), None);
    }
}
