//! Times `network::setup` + `teardown` of a veth machine (what `--network-veth` adds to a
//! launch), and the pieces it is made of. Run it only inside namespaces of its own, as
//! `bench/network.py` does: `unshare --net --mount --pid --fork --mount-proc netbench ...`.
//!
//! Prints one JSON object per line: `{"setup_ms": .., "teardown_ms": ..}` per run, then with
//! `--profile` one line per primitive. Each run is a new machine whose PID 1 exits before
//! teardown, as in a launch (`--pid1-alive`: it keeps running).

// Its output is the report (JSON lines for bench/network.py).
#![allow(clippy::print_stdout)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mctl::network::link::Rt;
use mctl::network::{self, NetworkMode, NetworkSpec, nat};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn machine() -> Child {
    let child = Command::new("unshare").args(["--net", "sleep", "600"]).spawn().expect("spawn unshare");
    let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l == mine)
        || !std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sleep"))
    {
        assert!(Instant::now() < deadline, "machine namespace did not appear");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.iter().position(|a| a == "--runs").map_or(1, |i| args[i + 1].parse().unwrap());
    let profile = args.iter().any(|a| a == "--profile");
    // As the launcher would: begun 3 ms before PID 1 is known (see network::begin).
    let prepare = args.iter().any(|a| a == "--prepare");
    // Refuse to touch a namespace we did not make: a fresh one has no link but `lo`.
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap();
    let links: Vec<&str> = dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(links, ["lo"], "run netbench only inside a fresh network namespace (see bench/network.py)");
    network::loopback_up().unwrap();
    let state = tempfile_dir();
    let mut spec = NetworkSpec::new(NetworkMode::Veth);
    spec.state_dir = state.clone();
    let mut m = machine();
    let pid = i32::try_from(m.id()).expect("a pid");
    // As in a launch, PID 1 has exited (and was reaped) when teardown runs; with
    // --pid1-alive it still runs (teardown then deletes the pair itself).
    let pid1_alive = args.iter().any(|a| a == "--pid1-alive");
    for i in 0..runs {
        let mut m1 = machine();
        let (name, pid1) = (format!("bench{i}"), i32::try_from(m1.id()).expect("a pid"));
        let (t0, net) = if prepare {
            let t = Instant::now();
            let pending = network::begin(&spec, &name).expect("begin");
            println!("{{\"prepare_ms\": {:.3}}}", ms(t.elapsed()));
            // What the outer child takes to report PID 1, which the first half overlaps.
            std::thread::sleep(Duration::from_millis(3));
            let t0 = Instant::now();
            (t0, pending.finish(pid1).expect("setup"))
        } else {
            (Instant::now(), network::setup(&spec, &name, pid1).expect("setup"))
        };
        let t1 = Instant::now();
        if !pid1_alive {
            let _ = m1.kill();
            let _ = m1.wait();
        }
        let t2 = Instant::now();
        net.teardown();
        let t3 = Instant::now();
        let _ = m1.kill();
        let _ = m1.wait();
        println!("{{\"setup_ms\": {:.3}, \"teardown_ms\": {:.3}}}", ms(t1 - t0), ms(t3 - t2));
    }
    if profile {
        let n = 15;
        let p = |name: &str, f: &mut dyn FnMut() -> Duration| {
            let v: Vec<f64> = (0..n).map(|_| ms(f())).collect();
            println!("{{\"primitive\": \"{name}\", \"median_ms\": {:.3}}}", median(v));
        };
        p("block_on_thread (empty)", &mut || {
            let t = Instant::now();
            mctl::runtime::block_on_thread(|| async {});
            t.elapsed()
        });
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        p("netlink connection in the machine's namespace", &mut || {
            let ns = ns.try_clone().unwrap();
            mctl::runtime::block_on_thread(move || async move {
                let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
                let t = Instant::now();
                Rt::connect_in(&ns, &home, "bench").unwrap();
                t.elapsed()
            })
            .unwrap()
        });
        let e =
            nat::NatEntries { machine: "bench".into(), guest: "10.213.0.2".parse().unwrap(), ports: vec![] };
        // As a launch does: the socket is released by a child, a grace period later.
        let remove = |sock| {
            let (sock, removed) = nat::remove(&e, true, Some(sock));
            removed.unwrap();
            nat::release_later(sock.unwrap());
        };
        p("nft: create table + add element", &mut || {
            let t = Instant::now();
            let sock = nat::add(&e, false).unwrap();
            let d = t.elapsed();
            remove(sock);
            d
        });
        p("nft: delete table", &mut || {
            let sock = nat::add(&e, false).unwrap();
            let t = Instant::now();
            remove(sock);
            t.elapsed()
        });
        let rt_ops = |add: bool| {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
            mctl::runtime::block_on_thread(move || async move {
                let rt = Rt::connect().unwrap();
                let t = Instant::now();
                if add {
                    rt.add_veth(
                        "ve-p",
                        [2, 0, 0, 0, 0, 1],
                        "host0",
                        [2, 0, 0, 0, 0, 2],
                        &ns,
                        mctl::network::link::HostEnd::Up { master: None },
                    )
                    .await
                    .unwrap();
                } else {
                    rt.delete("ve-p").await.unwrap();
                }
                t.elapsed()
            })
            .unwrap()
        };
        p("netlink: add veth pair (peer into the netns)", &mut || {
            let d = rt_ops(true);
            rt_ops(false);
            d
        });
        p("netlink: delete veth pair", &mut || {
            rt_ops(true);
            rt_ops(false)
        });
    }
    let _ = m.kill();
    let _ = m.wait();
    let _ = std::fs::remove_dir_all(&state);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mctl-netbench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
