//! The registry's rules, apart from the daemon around it: what a registration request must
//! satisfy (machined's checks and messages), the machines by name with one watcher each, and
//! which machine a process belongs to. Pure data and functions, unit-tested like machined's
//! `test-machined-core.c`.

use std::collections::BTreeMap;

use super::machine::{Class, Machine};
use super::{ManagerError, RegisterRequest};
use crate::names;

/// A registration request that passed machined's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The machine's name (hostname rules).
    pub name: String,
    /// Its 128-bit ID, if given.
    pub id: Option<[u8; 16]>,
    /// The registering service.
    pub service: String,
    /// container or vm.
    pub class: Class,
    /// The leader's pid (the caller's when the request said 0).
    pub leader: u32,
    /// "" or an absolute path.
    pub root_directory: String,
    /// Host-side interface indices.
    pub netif: Vec<i32>,
}

/// Checks a request as machined 252 does, with its error messages.
pub fn validate(req: RegisterRequest, caller_pid: u32) -> Result<Validated, ManagerError> {
    if names::validate(&req.name).is_err() {
        return Err(ManagerError::InvalidArgs("Invalid machine name".into()));
    }
    let id: Option<[u8; 16]> = match req.id.len() {
        0 => None,
        16 => Some(req.id.as_slice().try_into().expect("length checked")),
        _ => return Err(ManagerError::InvalidArgs("Invalid machine ID parameter".into())),
    };
    if let Some(bad) = req.netif.iter().find(|i| **i <= 0) {
        return Err(ManagerError::InvalidArgs(format!("Invalid network interface index {bad}")));
    }
    let class = Class::parse(&req.class)
        .ok_or_else(|| ManagerError::InvalidArgs("Invalid machine class parameter".into()))?;
    let leader = match req.leader {
        1 => return Err(ManagerError::InvalidArgs("Invalid leader PID".into())),
        0 => caller_pid,
        l => l,
    };
    if !req.root_directory.is_empty() && !req.root_directory.starts_with('/') {
        return Err(ManagerError::InvalidArgs("Root directory must be empty or an absolute path".into()));
    }
    Ok(Validated {
        name: req.name,
        id,
        service: req.service,
        class,
        leader,
        root_directory: req.root_directory,
        netif: req.netif,
    })
}

/// The machines by name, each with what watches its leader (`W`: dropped with the entry).
#[derive(Debug)]
pub struct Registry<W> {
    entries: BTreeMap<String, (Machine, Option<W>)>,
}

impl<W> Default for Registry<W> {
    fn default() -> Self {
        Registry { entries: BTreeMap::new() }
    }
}

impl<W> Registry<W> {
    /// Adds a machine; a name already taken is refused.
    pub fn insert(&mut self, machine: Machine, watcher: Option<W>) -> Result<(), ManagerError> {
        if self.entries.contains_key(&machine.name) {
            return Err(ManagerError::MachineExists(machine.name));
        }
        self.entries.insert(machine.name.clone(), (machine, watcher));
        Ok(())
    }

    /// Whether `name` is taken.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Removes a machine (its watcher is dropped with it).
    pub fn remove(&mut self, name: &str) -> Option<Machine> {
        self.entries.remove(name).map(|(m, _)| m)
    }

    /// Removes `name` only if `leader` still leads it (a leader's exit must not remove a later
    /// machine of the same name); the watcher is handed back, not dropped, since it is the one
    /// reporting the exit.
    pub fn remove_exited(&mut self, name: &str, leader: u32) -> Option<(Machine, Option<W>)> {
        match self.entries.get(name) {
            Some((m, _)) if m.leader == leader => self.entries.remove(name),
            _ => None,
        }
    }

    /// One machine.
    pub fn get(&self, name: &str) -> Option<&Machine> {
        self.entries.get(name).map(|(m, _)| m)
    }

    /// One machine, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Machine> {
        self.entries.get_mut(name).map(|(m, _)| m)
    }

    /// Every machine, by name.
    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.entries.values().map(|(m, _)| m)
    }
}

/// Whether a process in cgroup `cg` is inside the machine's cgroup `machine_cg` (never for a
/// machine without one of its own, and `/a/bc` is not inside `/a/b`).
pub fn in_machine_cgroup(machine_cg: &str, cg: &str) -> bool {
    !machine_cg.is_empty()
        && machine_cg != "/"
        && (cg == machine_cg || cg.strip_prefix(machine_cg).is_some_and(|rest| rest.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::machine::State;

    fn request(name: &str) -> RegisterRequest {
        RegisterRequest {
            name: name.into(),
            id: Vec::new(),
            service: "test".into(),
            class: "container".into(),
            leader: 0,
            root_directory: String::new(),
            netif: Vec::new(),
        }
    }

    fn machine(name: &str, leader: u32) -> Machine {
        let v = validate(RegisterRequest { leader, ..request(name) }, 99).unwrap();
        Machine {
            name: v.name,
            id: v.id,
            timestamp: 0,
            timestamp_monotonic: 0,
            service: v.service,
            unit: String::new(),
            leader: v.leader,
            leader_start: 0,
            class: v.class,
            root_directory: v.root_directory,
            netif: v.netif,
            state: State::Running,
            cgroup: String::new(),
        }
    }

    fn invalid(req: RegisterRequest) -> String {
        match validate(req, 42) {
            Err(ManagerError::InvalidArgs(m)) => m,
            other => panic!("expected InvalidArgs, got {other:?}"),
        }
    }

    #[test]
    fn requests_are_checked_as_machined_does() {
        let ok = validate(request("web"), 42).unwrap();
        assert_eq!(ok.leader, 42, "leader 0 means the caller");
        assert_eq!(ok.id, None);
        assert_eq!(invalid(request("-bad")), "Invalid machine name");
        assert_eq!(
            invalid(RegisterRequest { id: vec![1; 15], ..request("a") }),
            "Invalid machine ID parameter"
        );
        assert_eq!(
            validate(RegisterRequest { id: vec![7; 16], ..request("a") }, 1).unwrap().id,
            Some([7; 16])
        );
        assert_eq!(
            invalid(RegisterRequest { netif: vec![3, 0], ..request("a") }),
            "Invalid network interface index 0"
        );
        assert_eq!(
            invalid(RegisterRequest { class: "toaster".into(), ..request("a") }),
            "Invalid machine class parameter"
        );
        assert_eq!(invalid(RegisterRequest { leader: 1, ..request("a") }), "Invalid leader PID");
        assert_eq!(
            invalid(RegisterRequest { root_directory: "rel/dir".into(), ..request("a") }),
            "Root directory must be empty or an absolute path"
        );
    }

    #[test]
    fn names_are_unique_and_an_old_leader_cannot_remove_a_new_machine() {
        let mut r: Registry<()> = Registry::default();
        r.insert(machine("web", 100), None).unwrap();
        assert!(
            matches!(r.insert(machine("web", 200), None), Err(ManagerError::MachineExists(n)) if n == "web")
        );
        // The machine was re-registered with another leader after the first exited.
        r.remove("web");
        r.insert(machine("web", 200), None).unwrap();
        assert!(r.remove_exited("web", 100).is_none(), "the old leader's exit removed the new machine");
        assert!(r.contains("web"));
        assert_eq!(r.remove_exited("web", 200).map(|(m, _)| m.leader), Some(200));
        assert!(!r.contains("web"));
    }

    #[test]
    fn a_process_belongs_to_a_machine_by_its_cgroup_subtree() {
        assert!(in_machine_cgroup("/mctl/web/payload", "/mctl/web/payload"));
        assert!(in_machine_cgroup("/mctl/web/payload", "/mctl/web/payload/init.scope"));
        assert!(!in_machine_cgroup("/mctl/web/payload", "/mctl/web/payloadx"));
        assert!(!in_machine_cgroup("/", "/anything"));
        assert!(!in_machine_cgroup("", "/anything"));
    }
}
