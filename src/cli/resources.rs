//! `mctl set-property`, `mctl top` and the resource lines of `mctl status`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zbus::OwnedVariant;

use crate::bus::proxy::{MctlManager1Proxy, UsageRow};

use super::args::{OutputFormat, SetPropertyArgs, TopArgs, TopOrder};
use super::manage::{call_error, unreachable, with_bus};
use super::output::{self, bytes, emit};
use super::{CliConfig, CliError};

/// `mctl set-property NAME NAME=VALUE...`: changes the running machine through mctld (which
/// refuses anyone but root), then, without `--runtime`, records the values in the machine's
/// settings file so its next start has them too.
pub fn set_property(a: &SetPropertyArgs, cfg: &CliConfig) -> Result<i32, CliError> {
    // Checked here first so that a typo is reported before anything changes.
    let props = super::machine::resources(&a.properties)?;
    let (name, assignments, runtime) = (a.name.clone(), a.properties.clone(), a.runtime);
    with_bus(move |conn| async move {
        let mctl = MctlManager1Proxy::new(&conn).await.map_err(unreachable)?;
        mctl.set_machine_properties(&name, runtime, &assignments)
            .await
            .map_err(|e| call_error("Could not set properties", e))
    })?;
    if !a.runtime {
        let file = super::settings::file_for(&a.name, cfg);
        crate::settings::record_resources(&file, &props).map_err(|e| {
            CliError::new(format!(
                "the running machine has the new limits, but they could not be recorded in {}: {e}",
                file.display()
            ))
        })?;
    }
    Ok(0)
}

/// The resource lines of `mctl status`, from the machine's properties (as systemctl status
/// shows a unit's).
pub fn status_lines(props: &HashMap<String, OwnedVariant>) -> String {
    let get = |name: &str| match props.get(name).map(|v| &**v) {
        Some(zbus::Variant::U64(n)) if *n != u64::MAX => Some(*n),
        _ => None,
    };
    let mut out = String::new();
    if let Some(tasks) = get("TasksCurrent") {
        let limit = get("TasksMax").map(|l| format!(" (limit: {l})")).unwrap_or_default();
        out.push_str(&format!("\t   Tasks: {tasks}{limit}\n"));
    }
    if let Some(mem) = get("MemoryCurrent") {
        let mut extra = Vec::new();
        if let Some(high) = get("MemoryHigh") {
            extra.push(format!("high: {}", bytes(high)));
        }
        if let Some(max) = get("MemoryMax") {
            extra.push(format!("max: {}", bytes(max)));
        }
        if let Some(peak) = get("MemoryPeak") {
            extra.push(format!("peak: {}", bytes(peak)));
        }
        let extra = if extra.is_empty() { String::new() } else { format!(" ({})", extra.join(", ")) };
        out.push_str(&format!("\t  Memory: {}{extra}\n", bytes(mem)));
    }
    if let Some(ns) = get("CPUUsageNSec") {
        let quota =
            get("CPUQuotaPerSecUSec").map(|q| format!(" (quota: {}%)", q / 10_000)).unwrap_or_default();
        out.push_str(&format!("\t     CPU: {}{quota}\n", cpu_time(ns)));
    }
    if let (Some(r), Some(w)) = (get("IOReadBytes"), get("IOWriteBytes")) {
        out.push_str(&format!("\t      IO: {} read, {} written\n", bytes(r), bytes(w)));
    }
    if let (Some(i), Some(o)) = (get("IPIngressBytes"), get("IPEgressBytes")) {
        out.push_str(&format!("\t Network: {} in, {} out\n", bytes(i), bytes(o)));
    }
    if let Some(n) = get("OOMKills").filter(|n| *n > 0) {
        out.push_str(&format!("\tOOM kills: {n}\n"));
    }
    out
}

/// CPU time as systemd prints it (`1.234s`, `12min 3.456s`).
fn cpu_time(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let (min, s, frac) = (ms / 60_000, (ms / 1000) % 60, ms % 1000);
    if min > 0 { format!("{min}min {s}.{frac:03}s") } else { format!("{s}.{frac:03}s") }
}

/// One machine in one refresh of `top`: its sample and the rates since the previous one.
struct TopRow {
    sample: UsageRow,
    cpu_percent: Option<f64>,
    read_rate: Option<f64>,
    write_rate: Option<f64>,
}

impl TopRow {
    fn name(&self) -> &str {
        &self.sample.0
    }

    fn tasks(&self) -> Option<u64> {
        known(self.sample.3)
    }

    fn memory(&self) -> Option<u64> {
        known(self.sample.2)
    }
}

fn known(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

/// Rates between two samples of one machine: CPU in percent of one CPU, I/O in bytes/s.
fn top_rows(now: &[UsageRow], before: &HashMap<String, UsageRow>, elapsed: Duration) -> Vec<TopRow> {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let rate = |new: u64, old: Option<u64>| match (known(new), old.and_then(known)) {
        (Some(n), Some(o)) if n >= o => Some((n - o) as f64 / secs),
        _ => None,
    };
    now.iter()
        .map(|r| {
            let prev = before.get(&r.0);
            TopRow {
                sample: r.clone(),
                cpu_percent: rate(r.1, prev.map(|p| p.1)).map(|ns_per_s| ns_per_s / 1e7),
                read_rate: rate(r.4, prev.map(|p| p.4)),
                write_rate: rate(r.5, prev.map(|p| p.5)),
            }
        })
        .collect()
}

fn sort_rows(rows: &mut [TopRow], order: TopOrder) {
    let key = |r: &TopRow| -> f64 {
        match order {
            TopOrder::Cpu => r.cpu_percent.unwrap_or(-1.0),
            TopOrder::Memory => r.memory().map_or(-1.0, |m| m as f64),
            TopOrder::Tasks => r.tasks().map_or(-1.0, |t| t as f64),
            TopOrder::Io => r.read_rate.unwrap_or(0.0) + r.write_rate.unwrap_or(0.0),
            TopOrder::Name => 0.0,
        }
    };
    rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.name().cmp(b.name())));
}

fn top_table(rows: &[TopRow]) -> String {
    let dash = || "-".to_owned();
    // The rates are differences of counters, never negative, and only displayed: `as` rounds
    // them down to whole bytes (saturating, should one ever pass u64::MAX).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name().to_owned(),
                r.tasks().map_or_else(dash, |t| t.to_string()),
                r.cpu_percent.map_or_else(dash, |c| format!("{c:.1}")),
                r.memory().map_or_else(dash, bytes),
                r.read_rate.map_or_else(dash, |b| bytes(b as u64)),
                r.write_rate.map_or_else(dash, |b| bytes(b as u64)),
            ]
        })
        .collect();
    output::table(&["MACHINE", "TASKS", "%CPU", "MEMORY", "READ/s", "WRITE/s"], &cells)
}

fn top_json(rows: &[TopRow], pretty: bool) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let s = &r.sample;
            serde_json::json!({
                "machine": r.name(),
                "tasks": r.tasks(),
                "cpu_percent": r.cpu_percent,
                "cpu_usage_nsec": known(s.1),
                "memory_current": r.memory(),
                "memory_max": known(s.8),
                "io_read_bytes": known(s.4),
                "io_write_bytes": known(s.5),
                "io_read_rate": r.read_rate,
                "io_write_rate": r.write_rate,
                "ip_ingress_bytes": known(s.6),
                "ip_egress_bytes": known(s.7),
                "oom_kills": known(s.9),
            })
        })
        .collect();
    output::json(&items, pretty)
}

/// `mctl top`: every running machine's use, refreshed every `--delay` seconds. The first
/// refresh has no rates yet (shown as `-`), as in systemd-cgtop.
pub fn top(a: &TopArgs) -> Result<i32, CliError> {
    if !(a.delay.is_finite() && a.delay > 0.0) {
        return Err(CliError::new(format!(
            "invalid --delay {}: expected a positive number of seconds",
            a.delay
        )));
    }
    let (delay, iterations, order, format) =
        (Duration::from_secs_f64(a.delay), a.iterations, a.order, a.output);
    let batch = a.batch || format != OutputFormat::Table;
    with_bus(move |conn| async move {
        let mctl = MctlManager1Proxy::new(&conn).await.map_err(unreachable)?;
        let mut before: HashMap<String, UsageRow> = HashMap::new();
        let mut last = Instant::now();
        let mut n = 0;
        loop {
            let now = mctl.list_machine_usage().await.map_err(|e| call_error("Could not get usage", e))?;
            let taken = Instant::now();
            let mut rows = top_rows(&now, &before, taken - last);
            sort_rows(&mut rows, order);
            let text = match format {
                OutputFormat::Table => {
                    let mut text = if batch { String::new() } else { "\x1b[H\x1b[2J".to_owned() };
                    text.push_str(&top_table(&rows));
                    text.push_str(&format!("\n{} machines.\n", rows.len()));
                    text
                }
                OutputFormat::Json | OutputFormat::JsonPretty => {
                    top_json(&rows, format == OutputFormat::JsonPretty)
                }
            };
            emit(&text);
            before = now.into_iter().map(|r| (r.0.clone(), r)).collect();
            last = taken;
            n += 1;
            if iterations.is_some_and(|max| n >= max) {
                return Ok(0);
            }
            tokio::time::sleep(delay).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_previous_sample() {
        let row = |name: &str, cpu: u64, mem: u64| {
            (name.to_owned(), cpu, mem, 5, 0, 0, u64::MAX, u64::MAX, u64::MAX, 0)
        };
        let before: HashMap<String, UsageRow> = [("a".to_owned(), row("a", 1_000_000_000, 10))].into();
        let mut rows =
            top_rows(&[row("a", 1_500_000_000, 10), row("b", 7, 1 << 20)], &before, Duration::from_secs(1));
        assert_eq!(rows[0].cpu_percent, Some(50.0));
        assert_eq!(rows[1].cpu_percent, None);
        sort_rows(&mut rows, TopOrder::Memory);
        assert_eq!(rows[0].name(), "b");
        let t = top_table(&rows);
        assert!(t.contains("MACHINE TASKS %CPU MEMORY READ/s WRITE/s"), "{t}");
        assert!(t.contains("a       5     50.0 10B"), "{t}");
        assert_eq!(cpu_time(61_234_000_000), "1min 1.234s");
    }
}
