#!/usr/bin/env python3
"""What --network-veth adds to a launch: network::setup + teardown of a veth machine.

    bench/network.py [--runs N]

Needs root and a release build of the example (cargo build --release --examples). Every
measurement runs in fresh network, mount and pid namespaces made for it (unshare), so nothing
touches this machine's own network namespace. Prints medians (and min/max) of:
  1. cold: one setup + teardown per fresh process, as each `mctl run` is (includes the first
     netlink connections);
  2. warm: N setups + teardowns in one process;
  3. the primitives the two are made of (thread + runtime, netlink, nftables).
The teardown rows delete the veth pair explicitly (`teardown`, which waits for the kernel's
RCU grace periods); a launch leaves the pair to the machine's namespace instead
(`teardown_after_exit`), so what a launch pays is bench/launch.py's "added" figure.

Recorded 2026-12-05, 2-CPU Debian 12 VM, kernel 6.18, --runs 31:
  cold, begun 3 ms before PID 1 exists: begin 0.11 ms, setup 1.50 ms (min 1.05);
  primitives: block_on_thread 0.02, connection in the machine's netns 0.01, nft create table
  + element 0.11 (libnftables took 0.96), nft delete table 0.12 (its socket released by a
  child), veth add 0.40, veth delete 23.38 ms.
"""
import argparse, json, os, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch import RELEASE  # noqa: E402

BENCH = os.path.join(RELEASE, "examples/netbench")
UNSHARE = ["unshare", "--net", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc"]


def run(args):
    out = subprocess.run(UNSHARE + [BENCH] + args, check=True, capture_output=True, text=True)
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def show(label, values):
    print(f"  {label:<44} median {statistics.median(values):7.2f} ms"
          f"   min {min(values):7.2f}   max {max(values):7.2f}   (n={len(values)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=31)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root")
    if not os.path.exists(BENCH):
        sys.exit("build first: cargo build --release --examples")
    with open("/proc/loadavg") as f:
        print(f"load average at start: {f.read().split()[0]} on {os.cpu_count()} CPUs")
    for label, extra in (("", []), (", begun 3 ms before PID 1 exists", ["--prepare"])):
        res = [r for _ in range(args.runs) for r in run(["--runs", "1"] + extra)]
        cold = [r for r in res if "setup_ms" in r]
        print(f"cold (one machine per process, like `mctl run --network-veth`{label}):")
        if extra:
            show("network::begin (its thread overlaps the outer child)", [r["prepare_ms"] for r in res if "prepare_ms" in r])
        show("setup", [r["setup_ms"] for r in cold])
        show("teardown", [r["teardown_ms"] for r in cold])
        show("setup + teardown", [r["setup_ms"] + r["teardown_ms"] for r in cold])
    warm = run(["--runs", str(args.runs), "--profile"])
    loops = [r for r in warm if "setup_ms" in r]
    print(f"warm ({args.runs} machines in one process):")
    show("setup", [r["setup_ms"] for r in loops])
    show("teardown", [r["teardown_ms"] for r in loops])
    alive = [r for r in run(["--runs", str(args.runs), "--pid1-alive"]) if "setup_ms" in r]
    print("warm, teardown while PID 1 still runs (the pair is deleted explicitly):")
    show("teardown", [r["teardown_ms"] for r in alive])
    print("primitives (median of 15):")
    for r in warm:
        if "primitive" in r:
            print(f"  {r['primitive']:<44} {r['median_ms']:7.2f} ms")


if __name__ == "__main__":
    main()
