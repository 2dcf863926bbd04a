//! Registers N machines with one or more machine managers, for `bench/manager.py`.
//!
//!     regbench --count N --cgroup DIR BUS=DESTINATION...
//!
//! Starts N sleeping leaders, each in its own scope cgroup `DIR/regbench-I.scope` (systemd-
//! machined accepts only leaders that belong to a unit), registers all of them with every
//! manager in turn (RegisterMachineWithNetwork, one call after another, as launchers do), prints one JSON
//! line per manager, then `ready`, and keeps the leaders until its standard input closes. It
//! then kills them and removes the cgroups.

// Its output is the report (JSON lines for bench/manager.py).
#![allow(clippy::print_stdout)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use mctl::bus::proxy::Manager1Proxy;

struct Leaders {
    children: Vec<Child>,
    cgroups: Vec<PathBuf>,
}

impl Leaders {
    fn start(count: usize, cgroup_dir: &Path) -> Leaders {
        let mut me = Leaders { children: Vec::new(), cgroups: Vec::new() };
        for i in 0..count {
            let cg = cgroup_dir.join(format!("regbench-{i}.scope"));
            std::fs::create_dir(&cg).expect("create a leader's cgroup");
            me.cgroups.push(cg.clone());
            // setpriv execs sleep in place, so its pid is the leader's; the death signal
            // ends the leaders even when this process is killed.
            let child = Command::new("setpriv")
                .args(["--pdeathsig", "KILL", "sleep", "3600"])
                .stdout(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .expect("start a sleeping leader");
            std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).expect("move a leader");
            me.children.push(child);
        }
        me
    }
}

impl Drop for Leaders {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for cg in &self.cgroups {
            let _ = std::fs::remove_dir(cg);
        }
    }
}

async fn register_all(address: &str, destination: &str, leaders: &Leaders) -> zbus::Result<f64> {
    let conn = zbus::connection::Builder::address(address).build().await?;
    let mgr = Manager1Proxy::builder(&conn).destination(destination.to_owned()).build().await?;
    let start = Instant::now();
    for (i, leader) in leaders.children.iter().enumerate() {
        let id = uuid::Uuid::new_v4();
        mgr.register_machine_with_network(
            &format!("bench-{i}"),
            id.as_bytes(),
            "regbench",
            "container",
            leader.id(),
            "/",
            &[],
        )
        .await?;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

fn main() {
    let mut count = 1000;
    let mut cgroup_dir = None;
    let mut managers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--cgroup" => cgroup_dir = args.next().map(PathBuf::from),
            m => {
                let (bus, dest) = m.rsplit_once('=').expect("BUS=DESTINATION");
                managers.push((bus.to_owned(), dest.to_owned()));
            }
        }
    }
    let cgroup_dir = cgroup_dir.expect("--cgroup DIR");
    let leaders = Leaders::start(count, &cgroup_dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    for (bus, dest) in &managers {
        match rt.block_on(register_all(bus, dest, &leaders)) {
            Ok(ms) => {
                println!("{{\"destination\": \"{dest}\", \"count\": {count}, \"register_ms\": {ms:.1}}}")
            }
            Err(e) => println!("{{\"destination\": \"{dest}\", \"error\": {:?}}}", e.to_string()),
        }
    }
    println!("ready");
    // Holds the leaders until the bench is done with them.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(leaders);
}
