//! A container's cgroup: `linux.cgroupsPath` in every hierarchy (cgroup2, and on hybrid hosts
//! each v1 one), its resources, device policy and freezer.
//!
//! Paths follow runc: an absolute `cgroupsPath` is taken from each hierarchy's root, a relative
//! one from the runtime's own cgroup there; with `--systemd-cgroup` the `slice:prefix:name` form
//! becomes `<slice path>/<prefix>-<name>.scope` (mctl writes that layout itself; it does not ask
//! systemd for the scope).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxBlockIo, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources};
use serde::{Deserialize, Serialize};

use super::ContainerError;
use crate::cgroups::devices::{self, DeviceKind, DeviceRule};
use crate::cgroups::resources::{Limit, MachineDirs, Property};
use crate::cgroups::{self, CgroupConfig, Hierarchy};

/// The container's cgroup directory in each hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCgroup {
    /// In the cgroup2 hierarchy.
    pub unified: Option<PathBuf>,
    /// In each v1 hierarchy, with its controllers (`name=systemd` for the named one).
    pub v1: Vec<(Vec<String>, PathBuf)>,
}

/// Where the container's cgroup goes when `config.json` names none: beside the runtime's own,
/// as with runc, with no shared parent that deleting the last container would leave behind.
fn default_path(id: &str) -> String {
    id.to_owned()
}

/// `a-b-c.slice` as the directory path systemd gives it: `a.slice/a-b.slice/a-b-c.slice`.
fn slice_path(slice: &str) -> Result<String, ContainerError> {
    let bad = || ContainerError::Invalid(format!("invalid slice name '{slice}' in cgroupsPath"));
    let base = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if base == "-" || base.is_empty() {
        return Ok(String::new());
    }
    if base.starts_with('-') || base.ends_with('-') || base.contains("--") || base.contains('/') {
        return Err(bad());
    }
    let parts: Vec<&str> = base.split('-').collect();
    Ok((1..=parts.len()).map(|n| format!("{}.slice", parts[..n].join("-"))).collect::<Vec<_>>().join("/"))
}

/// The cgroup path (absolute: from the hierarchy roots; relative: from the runtime's own
/// cgroup) for `cgroupsPath`.
pub fn cgroup_path(config_path: Option<&Path>, systemd: bool, id: &str) -> Result<String, ContainerError> {
    let given = config_path.map(|p| p.to_string_lossy().into_owned()).filter(|p| !p.is_empty());
    if systemd {
        let given = given.unwrap_or_else(|| format!("system.slice:mctl:{id}"));
        let parts: Vec<&str> = given.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(ContainerError::Invalid(format!(
                "cgroupsPath '{given}' is not of the form slice:prefix:name (needed with --systemd-cgroup)"
            )));
        };
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        let unit = if name.ends_with(".slice") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        return Ok(format!("/{}/{unit}", slice_path(slice)?).replace("//", "/"));
    }
    let path = given.unwrap_or_else(|| default_path(id));
    if path.split('/').any(|c| c == "..") {
        return Err(ContainerError::Invalid(format!("cgroupsPath '{path}' must not contain '..'")));
    }
    Ok(path)
}

impl ContainerCgroup {
    /// The directories for `path` (see [`cgroup_path`]) in the hierarchies under `cfg`.
    pub fn resolve(cfg: &CgroupConfig, path: &str) -> Result<ContainerCgroup, ContainerError> {
        let hierarchies = cgroups::detect(cfg)?;
        let mut out = ContainerCgroup::default();
        for h in &hierarchies {
            let dir = dir_in(h, path);
            if h.v2 {
                out.unified = Some(dir);
            } else {
                out.v1.push((h.controllers.clone(), dir));
            }
        }
        Ok(out)
    }

    /// Every directory.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.unified.iter().map(PathBuf::as_path).chain(self.v1.iter().map(|(_, d)| d.as_path()))
    }

    /// Makes the directories (and their parents), with the controllers enabled on the way down
    /// in cgroup2 and v1 cpusets filled in.
    pub fn create(&self, cfg: &CgroupConfig) -> Result<(), ContainerError> {
        let hierarchies = cgroups::detect(cfg)?;
        for h in &hierarchies {
            let Some(dir) = self.dir_for(h) else { continue };
            cgroups::make_dirs(h, dir)?;
            if h.v2
                && let Some(parent) = dir.parent()
            {
                // Controllers enabled on the way down (from the hierarchy's root, or our own
                // cgroup for a relative path) are what the limits need; the container's own
                // directory enables none, as it holds processes.
                let from = if dir.starts_with(h.own_dir()) { h.own_dir() } else { h.mount.clone() };
                cgroups::enable_controllers(&from, parent)?;
            }
        }
        Ok(())
    }

    fn dir_for(&self, h: &Hierarchy) -> Option<&Path> {
        if h.v2 {
            self.unified.as_deref()
        } else {
            self.v1.iter().find(|(c, _)| *c == h.controllers).map(|(_, d)| d.as_path())
        }
    }

    /// Moves `pid` into the container's cgroup in every hierarchy.
    pub fn add(&self, pid: i32) -> Result<(), ContainerError> {
        for dir in self.dirs() {
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(ContainerError::io("write", &procs))?;
        }
        Ok(())
    }

    fn machine_dirs(&self) -> Result<MachineDirs, ContainerError> {
        let unified = self.unified.clone().ok_or_else(|| {
            ContainerError::Invalid("this host has no cgroup2 hierarchy for the container's limits".into())
        })?;
        Ok(MachineDirs { unified, v1: self.v1.clone(), unit: None })
    }

    /// Sets `linux.resources` (memory, pids, cpu, cpuset, blockIO, hugepage limits,
    /// `unified`) and the device policy.
    pub fn apply(&self, res: &LinuxResources, initial: bool) -> Result<(), ContainerError> {
        let dirs = self.machine_dirs()?;
        let memory_v2 = fs::read_to_string(dirs.unified.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        for p in properties(res, memory_v2) {
            dirs.apply(&p).map_err(|e| ContainerError::Invalid(format!("cannot set {p}: {e}")))?;
        }
        if let Some(memory) = res.memory() {
            self.apply_memory(memory, memory_v2)?;
        }
        if let Some(block_io) = res.block_io() {
            self.apply_block_io(block_io)?;
        }
        if let Some(unified) = res.unified() {
            let dir = dirs.unified.clone();
            for (key, value) in unified {
                if key.contains('/') || key.starts_with('.') {
                    return Err(ContainerError::Invalid(format!("invalid cgroup file '{key}' in unified")));
                }
                let file = dir.join(key);
                fs::write(&file, value).map_err(ContainerError::io("write", &file))?;
            }
        }
        for h in res.hugepage_limits().as_deref().unwrap_or(&[]) {
            self.limit_hugepages(h.page_size(), h.limit())?;
        }
        if initial || res.devices().is_some() {
            self.apply_devices(res.devices().as_deref().unwrap_or(&[]))?;
        }
        Ok(())
    }

    /// The directory of a v1 controller's hierarchy, on hybrid hosts.
    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1.iter().find(|(c, _)| c.iter().any(|c| c == controller)).map(|(_, d)| d.as_path())
    }

    /// The memory settings beyond the limit (which [`properties`] carries): swap on v1, the
    /// reservation, swappiness and the OOM killer. Kernel memory limits are deprecated and
    /// ignored, as runc does.
    fn apply_memory(&self, m: &LinuxMemory, memory_v2: bool) -> Result<(), ContainerError> {
        let write = |dir: &Path, file: &str, value: String| -> Result<(), ContainerError> {
            let path = control_file(dir, file, "")?;
            fs::write(&path, &value).map_err(ContainerError::io("write", &path))
        };
        let limit = |v: i64| u64::try_from(v).ok();
        if memory_v2 {
            let dir = self.unified.as_deref().unwrap_or(Path::new("/"));
            if let Some(r) = m.reservation() {
                write(dir, "memory.low", limit(r).map_or("max".into(), |r| r.to_string()))?;
            }
            if m.swappiness().is_some_and(|s| s <= 100) {
                return Err(ContainerError::Invalid(
                    "memory swappiness is a cgroup v1 setting; the memory controller here is cgroup v2, \
                     which has none (leave linux.resources.memory.swappiness unset)"
                        .into(),
                ));
            }
            return Ok(());
        }
        let Some(dir) = self.v1_dir("memory") else { return Ok(()) };
        if let Some(swap) = m.swap() {
            // v1 counts memory and swap together; kernels without swap accounting have no file.
            let file = dir.join("memory.memsw.limit_in_bytes");
            if file.exists() {
                fs::write(&file, swap.to_string()).map_err(ContainerError::io("write", &file))?;
            }
        }
        if let Some(r) = m.reservation() {
            write(dir, "memory.soft_limit_in_bytes", limit(r).map_or("-1".into(), |r| r.to_string()))?;
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(ContainerError::Invalid(format!(
                    "invalid memory swappiness {s}: it must be 0 to 100"
                )));
            }
            write(dir, "memory.swappiness", s.to_string())?;
        }
        if m.disable_oom_killer() == Some(true) {
            write(dir, "memory.oom_control", "1".into())?;
        }
        Ok(())
    }

    /// `blockIO`: weights (converted to cgroup2's scale as runc does) and per-device
    /// throttles, in `io.weight`/`io.max` where cgroup2 has the io controller, else in the v1
    /// blkio files.
    fn apply_block_io(&self, b: &LinuxBlockIo) -> Result<(), ContainerError> {
        let v2 = self.unified.as_deref().filter(|d| d.join("io.max").exists());
        let Some(dir) = v2.or(self.v1_dir("blkio")) else {
            let any = b.weight().is_some_and(|w| w > 0)
                || b.weight_device().as_ref().is_some_and(|d| !d.is_empty())
                || [b.throttle_read_bps_device(), b.throttle_write_bps_device()]
                    .into_iter()
                    .chain([b.throttle_read_iops_device(), b.throttle_write_iops_device()])
                    .any(|d| d.as_ref().is_some_and(|d| !d.is_empty()));
            return if any {
                Err(ContainerError::Invalid(
                    "cannot apply blockIO: this host has no io or blkio controller".into(),
                ))
            } else {
                Ok(())
            };
        };
        let write = |file: &str, line: String| -> Result<(), ContainerError> {
            let path =
                control_file(dir, file, ", e.g. per-device weights need the BFQ I/O scheduler on cgroup v1")?;
            fs::write(&path, &line).map_err(|e| {
                ContainerError::Invalid(format!("the kernel refused '{line}' in {}: {e}", path.display()))
            })
        };
        if let Some(w) = b.weight().filter(|w| *w > 0) {
            if v2.is_some() {
                write("io.weight", format!("default {}", blkio_weight_to_io(w)))?;
            } else {
                write("blkio.weight", w.to_string())?;
            }
        }
        if let Some(w) = b.leaf_weight().filter(|w| *w > 0 && v2.is_none()) {
            write("blkio.leaf_weight", w.to_string())?;
        }
        for d in b.weight_device().as_deref().unwrap_or(&[]) {
            let (major, minor) = (d.major(), d.minor());
            if let Some(w) = d.weight() {
                if v2.is_some() {
                    write("io.weight", format!("{major}:{minor} {}", blkio_weight_to_io(w)))?;
                } else {
                    write("blkio.weight_device", format!("{major}:{minor} {w}"))?;
                }
            }
            if let Some(w) = d.leaf_weight()
                && v2.is_none()
            {
                write("blkio.leaf_weight_device", format!("{major}:{minor} {w}"))?;
            }
        }
        let throttles = [
            (b.throttle_read_bps_device(), "rbps", "blkio.throttle.read_bps_device"),
            (b.throttle_write_bps_device(), "wbps", "blkio.throttle.write_bps_device"),
            (b.throttle_read_iops_device(), "riops", "blkio.throttle.read_iops_device"),
            (b.throttle_write_iops_device(), "wiops", "blkio.throttle.write_iops_device"),
        ];
        for (devices, key, v1_file) in throttles {
            for d in devices.as_deref().unwrap_or(&[]) {
                let (major, minor, rate) = (d.major(), d.minor(), d.rate());
                if v2.is_some() {
                    // 0 means no limit to runc; io.max says that with "max".
                    let rate = if rate == 0 { "max".to_owned() } else { rate.to_string() };
                    write("io.max", format!("{major}:{minor} {key}={rate}"))?;
                } else {
                    write(v1_file, format!("{major}:{minor} {rate}"))?;
                }
            }
        }
        Ok(())
    }

    /// One `hugepageLimits` entry: `hugetlb.<size>.max` in cgroup2 when the controller is
    /// there, else `hugetlb.<size>.limit_in_bytes` in its v1 hierarchy. A size the kernel does
    /// not have is refused rather than ignored.
    fn limit_hugepages(&self, size: &str, limit: i64) -> Result<(), ContainerError> {
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ContainerError::Invalid(format!("invalid hugepage size '{size}' in hugepageLimits")));
        }
        let v2 = self.unified.as_ref().map(|d| (d.join(format!("hugetlb.{size}.max")), "max"));
        let v1 = self.v1_dir("hugetlb").map(|d| (d.join(format!("hugetlb.{size}.limit_in_bytes")), "-1"));
        let Some((file, unlimited)) = v2.into_iter().chain(v1).find(|(f, _)| f.exists()) else {
            return Err(ContainerError::Invalid(format!(
                "cannot limit hugepages of size {size}: no hugetlb controller here has that size"
            )));
        };
        let value = u64::try_from(limit).map_or_else(|_| unlimited.to_owned(), |l| l.to_string());
        fs::write(&file, value).map_err(ContainerError::io("write", &file))
    }

    /// The device policy: v1's `devices` lists on hybrid hosts; on pure cgroup2 hosts a
    /// device program that stays attached as long as the cgroup lives.
    fn apply_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<(), ContainerError> {
        let Some(allowed) = allowed_devices(rules) else { return Ok(()) };
        if let Some(dir) = self.v1_dir("devices") {
            let deny = dir.join("devices.deny");
            fs::write(&deny, "a").map_err(ContainerError::io("write", &deny))?;
            let allow = dir.join("devices.allow");
            for rule in &allowed {
                fs::write(&allow, rule.v1_line()).map_err(ContainerError::io("write", &allow))?;
            }
            return Ok(());
        }
        let Some(dir) = &self.unified else { return Ok(()) };
        let program = devices::program(&allowed).map_err(|e| ContainerError::Invalid(e.to_string()))?;
        let prog = crate::sys::linux::bpf_load_device_program(&program, "mctl_oci_dev")
            .map_err(ContainerError::io("load the device program for", dir))?;
        let cg = fs::File::open(dir).map_err(ContainerError::io("open", dir))?;
        use std::os::fd::AsFd;
        crate::sys::linux::bpf_attach_device_program(prog.as_fd(), cg.as_fd())
            .map_err(ContainerError::io("attach the device program to", dir))
    }

    /// Freezes or thaws the container.
    pub fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        let dir =
            self.unified.as_ref().ok_or_else(|| ContainerError::Invalid("no cgroup2 freezer".into()))?;
        if cgroups::freeze(dir, frozen, Duration::from_secs(10))? {
            Ok(())
        } else {
            Err(ContainerError::WrongStatus(format!(
                "the container's processes did not {} within 10 s",
                if frozen { "freeze" } else { "thaw" }
            )))
        }
    }

    /// Whether the container is frozen.
    pub fn is_frozen(&self) -> bool {
        self.unified.as_deref().is_some_and(cgroups::is_frozen)
    }

    /// Every process in the container's cgroup (and below it).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = match &self.unified {
            Some(d) => cgroups::pids_in(d),
            None => self.v1.first().map(|(_, d)| cgroups::pids_in(d)).unwrap_or_default(),
        };
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Removes the directories, killing what is left in them after a short wait.
    pub fn remove(&self) -> Result<(), ContainerError> {
        for dir in self.dirs() {
            cgroups::remove_tree(dir, Duration::from_secs(2))?;
        }
        Ok(())
    }
}

fn dir_in(h: &Hierarchy, path: &str) -> PathBuf {
    if let Some(abs) = path.strip_prefix('/') { h.mount.join(abs) } else { h.own_dir().join(path) }
}

/// `linux.resources` as the cgroup properties mctl's machines use.
fn properties(res: &LinuxResources, memory_v2: bool) -> Vec<Property> {
    let limit = |v: i64| u64::try_from(v).map_or(Limit::Infinity, Limit::Value);
    let mut out = Vec::new();
    if let Some(m) = res.memory()
        && let Some(l) = m.limit()
    {
        out.push(Property::MemoryMax(limit(l)));
        // cgroup2 counts swap apart from memory: the OCI total minus the memory limit.
        if let Some(swap) = m.swap().filter(|_| memory_v2) {
            let swap_only = if swap < 0 {
                Limit::Infinity
            } else {
                Limit::Value(swap.saturating_sub(l).max(0).unsigned_abs())
            };
            out.push(Property::MemorySwapMax(swap_only));
        }
    }
    if let Some(p) = res.pids() {
        out.push(Property::TasksMax(if p.limit() > 0 { limit(p.limit()) } else { Limit::Infinity }));
    }
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares() {
            // runc's conversion of shares (2..262144) to a weight (1..10000).
            let s = shares.clamp(2, 262_144);
            out.push(Property::CpuWeight(Some(1 + ((s - 2) * 9999) / 262_142)));
        }
        if let Some(quota) = cpu.quota() {
            let period = cpu.period().unwrap_or(100_000).max(1);
            let per_second = u64::try_from(quota).ok().map(|q| q.saturating_mul(1_000_000) / period);
            out.push(Property::CpuQuota(per_second));
        }
        if let Some(cpus) = cpu.cpus().as_ref().filter(|c| !c.is_empty()) {
            out.push(Property::AllowedCpus(cpus.clone()));
        }
    }
    out
}

/// The cgroup file `file` in `dir`, refused with a reason (and `hint`) where the kernel does not
/// offer that control: a setting is not silently dropped.
fn control_file(dir: &Path, file: &str, hint: &str) -> Result<PathBuf, ContainerError> {
    let path = dir.join(file);
    if path.exists() {
        Ok(path)
    } else {
        Err(ContainerError::Invalid(format!(
            "cannot set {file}: {} does not exist (the kernel offers no such control here{hint})",
            path.display()
        )))
    }
}

/// A blkio weight (10..1000) as an io weight (1..10000), as runc converts it.
fn blkio_weight_to_io(weight: u16) -> u64 {
    1 + (u64::from(weight.clamp(10, 1000)) - 10) * 9999 / 990
}

/// The devices a rule list allows, in mctl's allow-list form: rules apply in order, a later
/// one overriding what an earlier one said; `None` when everything stays allowed.
fn allowed_devices(rules: &[LinuxDeviceCgroup]) -> Option<Vec<DeviceRule>> {
    let mut all_allowed = true;
    let mut allowed: Vec<DeviceRule> = Vec::new();
    for r in rules {
        let kind = r.typ().unwrap_or(LinuxDeviceType::A);
        let whole = kind == LinuxDeviceType::A && r.major().is_none() && r.minor().is_none();
        let access = access_bits(r.access().as_deref().unwrap_or("rwm"));
        if whole {
            all_allowed = r.allow();
            allowed.clear();
            continue;
        }
        let kinds: &[DeviceKind] = match kind {
            LinuxDeviceType::C | LinuxDeviceType::U => &[DeviceKind::Char],
            LinuxDeviceType::B => &[DeviceKind::Block],
            LinuxDeviceType::A => &[DeviceKind::Char, DeviceKind::Block],
            LinuxDeviceType::P => continue,
        };
        for &k in kinds {
            let Some(major) = r.major() else {
                // "c *:* m": every major; the program cannot say that, so only mknod of the
                // common ones stays possible through the default list.
                continue;
            };
            let (Ok(major), minor) = (u32::try_from(major), r.minor().and_then(|m| u32::try_from(m).ok()))
            else {
                continue;
            };
            let rule = DeviceRule { kind: k, major, minor, access };
            if r.allow() {
                allowed.push(rule);
            } else {
                allowed
                    .retain(|a| !(a.kind == k && a.major == major && (minor.is_none() || a.minor == minor)));
            }
        }
    }
    if all_allowed {
        return None;
    }
    // What every container needs, as runc adds it: the standard nodes and ptys.
    for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)] {
        allowed.push(DeviceRule {
            kind: DeviceKind::Char,
            major,
            minor: Some(minor),
            access: devices::READ | devices::WRITE | devices::MKNOD,
        });
    }
    allowed.push(DeviceRule {
        kind: DeviceKind::Char,
        major: 136,
        minor: None,
        access: devices::READ | devices::WRITE,
    });
    Some(allowed)
}

fn access_bits(access: &str) -> u8 {
    access.chars().fold(0, |acc, c| {
        acc | match c {
            'r' => devices::READ,
            'w' => devices::WRITE,
            'm' => devices::MKNOD,
            _ => 0,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_as_runc_reads_them() {
        assert_eq!(cgroup_path(None, false, "c1").unwrap(), "c1");
        assert_eq!(
            cgroup_path(Some(Path::new("/libpod_parent/libpod-x")), false, "x").unwrap(),
            "/libpod_parent/libpod-x"
        );
        assert_eq!(
            cgroup_path(Some(Path::new("machine.slice:libpod:abc")), true, "abc").unwrap(),
            "/machine.slice/libpod-abc.scope"
        );
        assert_eq!(
            cgroup_path(Some(Path::new("a-b.slice:crio:x")), true, "x").unwrap(),
            "/a.slice/a-b.slice/crio-x.scope"
        );
        assert!(cgroup_path(Some(Path::new("/a/../b")), false, "x").is_err());
        assert!(cgroup_path(Some(Path::new("nocolons")), true, "x").is_err());
    }

    #[test]
    fn device_rules_apply_in_order() {
        let parse = |j: &str| -> Vec<LinuxDeviceCgroup> { serde_json::from_str(j).unwrap() };
        assert_eq!(allowed_devices(&parse(r#"[{"allow":true,"access":"rwm"}]"#)), None);
        let podman = allowed_devices(&parse(r#"[{"allow":false,"access":"rwm"}]"#)).unwrap();
        assert!(podman.iter().any(|r| r.major == 1 && r.minor == Some(3)), "/dev/null stays usable");
        assert!(!podman.iter().any(|r| r.major == 8), "no disks");
        let fuse = allowed_devices(&parse(
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":10,"minor":229,"access":"rw"}]"#,
        ))
        .unwrap();
        assert!(
            fuse.iter()
                .any(|r| r.major == 10 && r.minor == Some(229) && r.access == devices::READ | devices::WRITE)
        );
    }

    #[test]
    fn hugepage_limits_go_where_the_controller_is() {
        let dir = tempfile::tempdir().unwrap();
        let (v2, v1) = (dir.path().join("unified/c"), dir.path().join("hugetlb/c"));
        fs::create_dir_all(&v2).unwrap();
        fs::create_dir_all(&v1).unwrap();
        fs::write(v1.join("hugetlb.2MB.limit_in_bytes"), "").unwrap();
        let cg =
            ContainerCgroup { unified: Some(v2.clone()), v1: vec![(vec!["hugetlb".into()], v1.clone())] };
        // Hybrid: the v1 hierarchy has the controller.
        cg.limit_hugepages("2MB", 4 << 20).unwrap();
        assert_eq!(fs::read_to_string(v1.join("hugetlb.2MB.limit_in_bytes")).unwrap(), "4194304");
        cg.limit_hugepages("2MB", -1).unwrap();
        assert_eq!(fs::read_to_string(v1.join("hugetlb.2MB.limit_in_bytes")).unwrap(), "-1");
        // cgroup2 when it has it.
        fs::write(v2.join("hugetlb.2MB.max"), "").unwrap();
        cg.limit_hugepages("2MB", 8 << 20).unwrap();
        assert_eq!(fs::read_to_string(v2.join("hugetlb.2MB.max")).unwrap(), "8388608");
        let e = cg.limit_hugepages("3MB", 1).unwrap_err().to_string();
        assert!(e.contains("size 3MB"), "{e}");
        let e = cg.limit_hugepages("../x", 1).unwrap_err().to_string();
        assert!(e.contains("invalid hugepage size"), "{e}");
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn block_io_and_memory_settings_go_where_the_controllers_are() {
        let dir = tempfile::tempdir().unwrap();
        let (v2, blkio, memory) =
            (dir.path().join("unified/c"), dir.path().join("blkio/c"), dir.path().join("memory/c"));
        for (d, files) in [
            (&v2, &[][..]),
            (&blkio, &["blkio.throttle.read_bps_device", "blkio.throttle.write_iops_device"][..]),
            (&memory, &["memory.soft_limit_in_bytes", "memory.swappiness", "memory.oom_control"][..]),
        ] {
            fs::create_dir_all(d).unwrap();
            for f in files {
                fs::write(d.join(f), "").unwrap();
            }
        }
        let read = |d: &Path, f: &str| fs::read_to_string(d.join(f)).unwrap();
        let hybrid = ContainerCgroup {
            unified: Some(v2.clone()),
            v1: vec![(vec!["blkio".into()], blkio.clone()), (vec!["memory".into()], memory.clone())],
        };
        let res: LinuxResources = serde_json::from_str(
            r#"{"blockIO":{"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
                "throttleWriteIOPSDevice":[{"major":8,"minor":16,"rate":100}]},
                "memory":{"reservation":1024,"swappiness":10,"disableOOMKiller":true}}"#,
        )
        .unwrap();
        hybrid.apply_block_io(res.block_io().as_ref().unwrap()).unwrap();
        hybrid.apply_memory(res.memory().as_ref().unwrap(), false).unwrap();
        assert_eq!(read(&blkio, "blkio.throttle.read_bps_device"), "8:0 1048576");
        assert_eq!(read(&blkio, "blkio.throttle.write_iops_device"), "8:16 100");
        assert_eq!(read(&memory, "memory.soft_limit_in_bytes"), "1024");
        assert_eq!(read(&memory, "memory.swappiness"), "10");
        assert_eq!(read(&memory, "memory.oom_control"), "1");
        // A per-device weight needs a file this kernel lacks: refused, not ignored.
        let weighted: LinuxBlockIo =
            serde_json::from_str(r#"{"weightDevice":[{"major":8,"minor":0,"weight":300}]}"#).unwrap();
        let e = hybrid.apply_block_io(&weighted).unwrap_err().to_string();
        assert!(e.contains("blkio.weight_device") && e.contains("does not exist"), "{e}");

        // cgroup2 with the io controller.
        fs::write(v2.join("io.max"), "").unwrap();
        fs::write(v2.join("io.weight"), "").unwrap();
        fs::write(v2.join("memory.low"), "").unwrap();
        let pure = ContainerCgroup { unified: Some(v2.clone()), v1: vec![] };
        pure.apply_block_io(res.block_io().as_ref().unwrap()).unwrap();
        assert_eq!(read(&v2, "io.max"), "8:16 wiops=100");
        pure.apply_block_io(&weighted).unwrap();
        assert_eq!(read(&v2, "io.weight"), format!("8:0 {}", blkio_weight_to_io(300)));
        let e = pure.apply_memory(res.memory().as_ref().unwrap(), true).unwrap_err().to_string();
        assert!(e.contains("swappiness"), "{e}");
        assert_eq!(read(&v2, "memory.low"), "1024");
        assert_eq!((blkio_weight_to_io(10), blkio_weight_to_io(1000)), (1, 10_000));
    }

    #[test]
    fn resources_become_properties() {
        let res: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864,"swap":134217728},"pids":{"limit":50},"cpu":{"quota":20000,"period":100000,"shares":1024}}"#,
        )
        .unwrap();
        let props = properties(&res, true);
        assert!(props.contains(&Property::MemoryMax(Limit::Value(67_108_864))));
        assert!(props.contains(&Property::MemorySwapMax(Limit::Value(67_108_864))));
        assert!(props.contains(&Property::TasksMax(Limit::Value(50))));
        assert!(props.contains(&Property::CpuQuota(Some(200_000))));
        assert!(props.contains(&Property::CpuWeight(Some(39))));
    }
}
