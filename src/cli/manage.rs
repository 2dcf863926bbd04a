//! Verbs that manage running machines through mctld: list, show, status, terminate, kill,
//! poweroff, reboot. Output follows machinectl's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zbus::{Connection, OwnedVariant};

use crate::bus::client::{error_message, is_no_manager, retry_when_busy, system_bus};
use crate::bus::proxy::{self, Manager1Proxy, MctlManager1Proxy};
use crate::bus::{OWN_NAME, introspect};
use crate::runtime::block_on_thread;
use crate::signals::SignalNumber;

use super::CliError;
use super::args::{KillArgs, ListArgs, OutputFormat, ShowArgs};
use super::output::{self, emit};

/// How long `list` keeps asking while its call is turned away for load (someone flooding mctld).
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The message of a D-Bus error (what machined's clients print).
pub fn describe(e: &zbus::Error) -> String {
    error_message(e)
}

pub(super) fn unreachable(e: zbus::Error) -> CliError {
    CliError::new(format!("cannot reach mctld on the system bus: {} (is mctld running?)", describe(&e)))
}

/// Runs `f` with a connection to the system bus.
pub(super) fn with_bus<T, F, Fut>(f: F) -> Result<T, CliError>
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, CliError>>,
    T: Send + 'static,
{
    block_on_thread(move || async move {
        let conn = system_bus().await.map_err(unreachable)?;
        f(conn).await
    })
    .unwrap_or_else(|| Err(CliError::new("the D-Bus client could not run")))
}

/// A failed call: unknown machines and similar keep machined's text; a missing manager says
/// how to get one.
pub(super) fn call_error(prefix: &str, e: zbus::Error) -> CliError {
    if is_no_manager(&e) {
        return unreachable(e);
    }
    CliError::new(format!("{prefix}: {}", describe(&e)))
}

struct ListRow {
    name: String,
    class: String,
    service: String,
    os: Option<String>,
    version: Option<String>,
    addresses: Vec<String>,
}

/// `mctl list`.
pub fn list(a: &ListArgs) -> Result<i32, CliError> {
    let rows = with_bus(|conn| async move {
        // One call for everything; per-machine calls only for a manager without it.
        let mctl = MctlManager1Proxy::new(&conn).await.map_err(unreachable)?;
        let machines = match retry_when_busy(BUSY_PATIENCE, || mctl.list_machines_detailed()).await {
            Ok(machines) => machines,
            Err(e)
                if crate::bus::client::error_name(&e).as_deref()
                    == Some("org.freedesktop.DBus.Error.UnknownMethod") =>
            {
                details_one_by_one(&conn).await?
            }
            Err(e) => return Err(call_error("Could not get machines", e)),
        };
        let known = |v: String| (!v.is_empty()).then_some(v);
        Ok(machines
            .into_iter()
            .map(|(name, class, service, os, version, addresses)| ListRow {
                os: known(os),
                version: known(version),
                addresses: addresses.iter().filter_map(|(f, b)| output::address(*f, b)).collect(),
                name,
                class,
                service,
            })
            .collect::<Vec<_>>())
    })?;
    emit(&format_list(&rows, a));
    Ok(0)
}

/// What `ListMachinesDetailed` returns, asked for machine by machine as machinectl does.
async fn details_one_by_one(conn: &Connection) -> Result<Vec<proxy::MachineDetails>, CliError> {
    let mgr = Manager1Proxy::new(conn).await.map_err(unreachable)?;
    let mut machines = mgr.list_machines().await.map_err(|e| call_error("Could not get machines", e))?;
    machines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rows = Vec::new();
    for (name, class, service, _) in machines {
        // As machinectl: OS and address lookups may fail; the row then shows "-".
        let mut os = mgr.get_machine_os_release(&name).await.unwrap_or_default();
        let addresses = mgr.get_machine_addresses(&name).await.unwrap_or_default();
        let id = os.remove("ID").unwrap_or_default();
        let version = os.remove("VERSION_ID").unwrap_or_default();
        rows.push((name, class, service, id, version, addresses));
    }
    Ok(rows)
}

fn format_list(rows: &[ListRow], a: &ListArgs) -> String {
    let opt = |v: &str| if v.is_empty() { None } else { Some(v.to_owned()) };
    match a.output {
        OutputFormat::Json | OutputFormat::JsonPretty => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "machine": r.name,
                        "class": opt(&r.class),
                        "service": opt(&r.service),
                        "os": r.os,
                        "version": r.version,
                        "addresses": if r.addresses.is_empty() { None } else { Some(r.addresses.join("\n")) },
                    })
                })
                .collect();
            output::json(&items, a.output == OutputFormat::JsonPretty)
        }
        OutputFormat::Table => {
            if rows.is_empty() {
                return if a.no_legend { String::new() } else { "No machines.\n".into() };
            }
            let dash = |v: Option<&str>| v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let addr = match r.addresses.as_slice() {
                        [] => "-".to_owned(),
                        [one] => one.clone(),
                        [first, ..] => format!("{first}…"),
                    };
                    vec![
                        r.name.clone(),
                        dash(Some(&r.class)),
                        dash(Some(&r.service)),
                        dash(r.os.as_deref()),
                        dash(r.version.as_deref()),
                        addr,
                    ]
                })
                .collect();
            if a.no_legend {
                output::table(&[], &cells)
            } else {
                let mut t =
                    output::table(&["MACHINE", "CLASS", "SERVICE", "OS", "VERSION", "ADDRESSES"], &cells);
                t.push_str(&format!("\n{} machines listed.\n", rows.len()));
                t
            }
        }
    }
}

async fn machine_properties(
    conn: &Connection,
    name: &str,
) -> Result<HashMap<String, OwnedVariant>, CliError> {
    let mgr = Manager1Proxy::new(conn).await.map_err(unreachable)?;
    let path = mgr.get_machine(name).await.map_err(|e| call_error("Could not get path to machine", e))?;
    let mut props = proxy::all_properties(conn, OWN_NAME, path.as_str())
        .await
        .map_err(|e| call_error("Could not get properties", e))?;
    // Asked for by name: GetAll("") leaves them out, as machinectl expects.
    let reply = conn
        .call_method(
            Some(OWN_NAME),
            path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "GetAll",
            &(introspect::MACHINE_RESOURCES.name,),
        )
        .await;
    if let Ok(resources) = reply.and_then(|r| r.body().deserialize::<HashMap<String, OwnedVariant>>()) {
        props.extend(resources);
    }
    Ok(props)
}

/// `mctl show`.
pub fn show(a: &ShowArgs) -> Result<i32, CliError> {
    let wanted: Vec<String> =
        a.property.iter().flat_map(|p| p.split(',')).filter(|p| !p.is_empty()).map(str::to_owned).collect();
    let json = a.output != OutputFormat::Table;
    let mut out = String::new();
    let mut objects = Vec::new();
    if a.names.is_empty() {
        let props = with_bus(|conn| async move {
            proxy::all_properties(&conn, OWN_NAME, proxy::manager_path())
                .await
                .map_err(|e| call_error("Could not get properties", e))
        })?;
        if json {
            objects.push(json_properties(&props, introspect::MANAGER.properties, &wanted, a.all));
        } else {
            out.push_str(&format_properties(&props, introspect::MANAGER.properties, &wanted, a.value, a.all));
        }
    }
    let order: Vec<_> = introspect::MACHINE
        .properties
        .iter()
        .chain(introspect::MACHINE_RESOURCES.properties)
        .copied()
        .collect();
    for (i, name) in a.names.iter().enumerate() {
        let n = name.clone();
        let props = with_bus(|conn| async move { machine_properties(&conn, &n).await });
        let props = match props {
            Ok(p) => p,
            Err(e) => {
                emit(&out);
                return Err(e);
            }
        };
        if json {
            objects.push(json_properties(&props, &order, &wanted, a.all));
            continue;
        }
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format_properties(&props, &order, &wanted, a.value, a.all));
    }
    if json {
        out = output::json(&objects, a.output == OutputFormat::JsonPretty);
    }
    emit(&out);
    Ok(0)
}

/// The properties `show` would print, as one JSON object: numbers and booleans as such,
/// everything else in its printed form.
fn json_properties(
    props: &HashMap<String, OwnedVariant>,
    order: &[(&str, &str, &str)],
    wanted: &[String],
    all: bool,
) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    for (name, _, _) in order {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let Some(v) = props.get(*name) else { continue };
        let value = match &**v {
            zbus::Variant::U64(n) => serde_json::json!(n),
            zbus::Variant::U32(n) => serde_json::json!(n),
            zbus::Variant::I32(n) => serde_json::json!(n),
            zbus::Variant::Bool(b) => serde_json::json!(b),
            _ => match output::property_value(name, v) {
                Some(t) if t.is_empty() && !all && wanted.is_empty() => continue,
                Some(t) => serde_json::json!(t),
                None if all || !wanted.is_empty() => serde_json::Value::Null,
                None => continue,
            },
        };
        obj.insert((*name).to_owned(), value);
    }
    serde_json::Value::Object(obj)
}

fn format_properties(
    props: &HashMap<String, OwnedVariant>,
    order: &[(&str, &str, &str)],
    wanted: &[String],
    value_only: bool,
    all: bool,
) -> String {
    let mut out = String::new();
    for (name, _, _) in order {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let Some(v) = props.get(*name) else { continue };
        let text = match output::property_value(name, v) {
            Some(t) if t.is_empty() && !all && wanted.is_empty() => continue,
            Some(t) => t,
            None if all || !wanted.is_empty() => "[unprintable]".to_owned(),
            None => continue,
        };
        if value_only {
            out.push_str(&format!("{text}\n"));
        } else {
            out.push_str(&format!("{name}={text}\n"));
        }
    }
    out
}

fn prop_str(props: &HashMap<String, OwnedVariant>, name: &str) -> String {
    props.get(name).and_then(|v| output::property_value(name, v)).unwrap_or_default()
}

fn prop_u64(props: &HashMap<String, OwnedVariant>, name: &str) -> u64 {
    match props.get(name).map(|v| &**v) {
        Some(zbus::Variant::U64(n)) => *n,
        Some(zbus::Variant::U32(n)) => u64::from(*n),
        _ => 0,
    }
}

/// `mctl status`.
pub fn status(names: &[String]) -> Result<i32, CliError> {
    let mut first = true;
    for name in names {
        let n = name.clone();
        let (props, addresses, os, shift, cgroup, frozen) = with_bus(|conn| async move {
            let props = machine_properties(&conn, &n).await?;
            let mgr = Manager1Proxy::new(&conn).await.map_err(unreachable)?;
            let addresses = mgr.get_machine_addresses(&n).await.unwrap_or_default();
            let os = mgr.get_machine_os_release(&n).await.unwrap_or_default();
            let shift = mgr.get_machine_uid_shift(&n).await.unwrap_or(0);
            let (cgroup, frozen) = match MctlManager1Proxy::new(&conn).await {
                Ok(p) => (
                    p.get_machine_control_group(&n).await.unwrap_or_default(),
                    p.is_machine_frozen(&n).await.unwrap_or(false),
                ),
                Err(_) => (String::new(), false),
            };
            Ok((props, addresses, os, shift, cgroup, frozen))
        })?;
        if !first {
            emit("\n");
        }
        first = false;
        let mut out = String::new();
        let id = prop_str(&props, "Id");
        out.push_str(&if id.is_empty() { format!("{name}\n") } else { format!("{name}({id})\n") });
        let ts = prop_u64(&props, "Timestamp");
        if ts > 0 {
            let now = crate::sys::linux::clock_us(libc::CLOCK_REALTIME);
            out.push_str(&format!("\t   Since: {}; {}\n", output::timestamp(ts), output::relative(ts, now)));
        }
        // A leader past u32 is no pid: shown as none rather than truncated to another's.
        let leader = u32::try_from(prop_u64(&props, "Leader")).unwrap_or(0);
        if leader > 0 {
            out.push_str(&format!(
                "\t  Leader: {leader} ({})\n",
                output::printable(&crate::procfs::comm(leader))
            ));
        }
        let (service, class) = (prop_str(&props, "Service"), prop_str(&props, "Class"));
        if service.is_empty() {
            out.push_str(&format!("\t   Class: {class}\n"));
        } else {
            out.push_str(&format!("\t Service: {service}; class {class}\n"));
        }
        let root = prop_str(&props, "RootDirectory");
        if !root.is_empty() {
            out.push_str(&format!("\t    Root: {root}\n"));
        }
        for (i, a) in addresses.iter().filter_map(|(f, b)| output::address(*f, b)).enumerate() {
            out.push_str(&if i == 0 { format!("\t Address: {a}\n") } else { format!("\t          {a}\n") });
        }
        if let Some(pretty) = os.get("PRETTY_NAME") {
            out.push_str(&format!("\t      OS: {}\n", output::printable(pretty)));
        }
        if shift != 0 {
            out.push_str(&format!("\tUID Shift: {shift}\n"));
        }
        let unit = prop_str(&props, "Unit");
        if !unit.is_empty() {
            out.push_str(&format!("\t    Unit: {unit}\n"));
        }
        if frozen {
            out.push_str("\t  Frozen: yes\n");
        }
        out.push_str(&super::resources::status_lines(&props));
        if !cgroup.is_empty() {
            out.push_str(&format!("\t  CGroup: {cgroup}\n"));
            if let Some(dir) = unified_dir(&cgroup) {
                out.push_str(&process_tree(&dir, "\t          "));
            }
        }
        emit(&out);
    }
    Ok(0)
}

fn unified_dir(cgroup: &str) -> Option<PathBuf> {
    let hs = crate::cgroups::detect(&Default::default()).ok()?;
    let mount = hs.into_iter().find(|h| h.v2)?.mount;
    let dir = mount.join(cgroup.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// The processes of a cgroup tree, drawn like systemd-cgls.
pub fn process_tree(dir: &Path, indent: &str) -> String {
    let mut out = String::new();
    draw(dir, indent, 0, &mut out);
    out
}

/// How deep [`process_tree`] draws: the guest makes the cgroups below its payload, as deep as it
/// likes.
const DRAWN_LEVELS: usize = 32;

/// Whether a cgroup2 directory or any below it has a process (one read of `cgroup.events`,
/// where cgroup2 keeps count; walked elsewhere).
fn populated(dir: &Path) -> bool {
    match crate::sys::linux::read_kernel_file(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 1"),
        Err(_) => !crate::cgroups::pids_in(dir).is_empty(),
    }
}

fn draw(dir: &Path, prefix: &str, level: usize, out: &mut String) {
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    children.sort();
    // Empty cgroups are left out, as systemd-cgls does.
    children.retain(|c| populated(c));
    let total = pids.len() + children.len();
    let mut n = 0;
    for pid in pids {
        n += 1;
        let branch = if n == total { "└─" } else { "├─" };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
            .unwrap_or_default();
        out.push_str(&format!("{prefix}{branch}{pid} {}\n", output::printable(&cmd)));
    }
    for c in children {
        n += 1;
        let last = n == total;
        let name = c.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        out.push_str(&format!("{prefix}{}{}\n", if last { "└─" } else { "├─" }, output::printable(&name)));
        let prefix = format!("{prefix}{}", if last { "  " } else { "│ " });
        if level + 1 < DRAWN_LEVELS {
            draw(&c, &prefix, level + 1, out);
        } else {
            out.push_str(&format!("{prefix}└─…\n"));
        }
    }
}

/// `mctl terminate`.
pub fn terminate(names: &[String]) -> Result<i32, CliError> {
    let names = names.to_vec();
    with_bus(|conn| async move {
        let mgr = Manager1Proxy::new(&conn).await.map_err(unreachable)?;
        for n in names {
            mgr.terminate_machine(&n).await.map_err(|e| call_error("Could not terminate machine", e))?;
        }
        Ok(0)
    })
}

/// `mctl freeze` / `mctl thaw`.
pub fn freeze(names: &[String], frozen: bool) -> Result<i32, CliError> {
    let names = names.to_vec();
    with_bus(move |conn| async move {
        let mctl = MctlManager1Proxy::new(&conn).await.map_err(unreachable)?;
        for n in names {
            let r = if frozen { mctl.freeze_machine(&n).await } else { mctl.thaw_machine(&n).await };
            r.map_err(|e| {
                call_error(if frozen { "Could not freeze machine" } else { "Could not thaw machine" }, e)
            })?;
        }
        Ok(0)
    })
}

/// `mctl kill`.
pub fn kill(a: &KillArgs) -> Result<i32, CliError> {
    let signal: SignalNumber =
        a.signal.parse().map_err(|e: crate::signals::BadSignal| CliError::new(e.to_string()))?;
    if !matches!(a.kill_whom.as_str(), "leader" | "all") {
        return Err(CliError::new(format!("invalid --kill-whom '{}': use leader or all", a.kill_whom)));
    }
    send(a.names.clone(), a.kill_whom.clone(), signal.0)
}

/// `mctl poweroff` / `mctl reboot`: the leader gets systemd's request signal.
pub fn signal_leader(names: &[String], signal: i32) -> Result<i32, CliError> {
    send(names.to_vec(), "leader".into(), signal)
}

fn send(names: Vec<String>, who: String, signal: i32) -> Result<i32, CliError> {
    with_bus(move |conn| async move {
        let mgr = Manager1Proxy::new(&conn).await.map_err(unreachable)?;
        for n in names {
            mgr.kill_machine(&n, &who, signal).await.map_err(|e| call_error("Could not kill machine", e))?;
        }
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_formats() {
        let rows = vec![ListRow {
            name: "probe-1".into(),
            class: "container".into(),
            service: "mctl".into(),
            os: Some("debian".into()),
            version: Some("12".into()),
            addresses: vec![],
        }];
        let table = ListArgs { no_legend: false, output: OutputFormat::Table };
        assert_eq!(
            format_list(&rows, &table),
            "MACHINE CLASS     SERVICE OS     VERSION ADDRESSES\nprobe-1 container mctl    debian 12      -\n\n1 machines listed.\n"
        );
        assert_eq!(format_list(&[], &table), "No machines.\n");
        let json = ListArgs { no_legend: false, output: OutputFormat::Json };
        assert_eq!(
            format_list(&rows, &json),
            "[{\"machine\":\"probe-1\",\"class\":\"container\",\"service\":\"mctl\",\"os\":\"debian\",\"version\":\"12\",\"addresses\":null}]\n"
        );
    }

    /// The process tree shows what the guest named and ran escaped, and stops at a depth.
    #[test]
    fn process_tree_escapes_guest_names_and_stops_deep_down() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = |dir: &Path, procs: &str| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
            std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        };
        let top = tmp.path().join("payload");
        cgroup(&top, "");
        let hostile = top.join("evil\x1b]0;owned\x07\nforged");
        cgroup(&hostile, &format!("{}\n", std::process::id()));
        let mut deep = top.join("deep");
        for _ in 0..40 {
            cgroup(&deep, "");
            deep = deep.join("d");
        }
        // An empty cgroup is left out.
        std::fs::create_dir(top.join("empty")).unwrap();
        std::fs::write(top.join("empty/cgroup.events"), "populated 0\n").unwrap();
        let tree = process_tree(&top, "");
        assert!(!tree.chars().any(|c| c.is_control() && c != '\n'), "{tree:?}");
        assert!(tree.contains("evil\\u{1b}]0;owned\\u{7}\\nforged\n"), "{tree}");
        assert!(!tree.contains("empty"), "{tree}");
        assert_eq!(tree.lines().filter(|l| l.ends_with("─d")).count(), DRAWN_LEVELS - 1, "{tree}");
        assert!(tree.contains("└─…"), "{tree}");
    }
}
