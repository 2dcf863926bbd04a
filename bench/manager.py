#!/usr/bin/env python3
"""mctld at 1000 machines, side by side with the real systemd-machined.

    bench/manager.py [--count N] [--runs N] [--state-on DIR]

Needs root, a release build with examples (cargo build --release --examples), dbus-daemon
and systemd-container. Starts two private system-like buses: one with mctld
--machined-compat (bus policy from dbus/), one with systemd-machined (in a private mount
namespace with a tmpfs /run, as it wants /run/systemd); mctld's state directory is on a
tmpfs too (/dev/shm), as /run/mctl is on a systemd host. With --state-on DIR (a directory on
a disk file system, e.g. /var/tmp), both keep their state there instead: mctld's state
directory and machined's /run (bind-mounted from DIR), as on hosts whose /run is not a tmpfs.
Then:
  1. idle RSS of both managers;
  2. registers N machines with each (examples/regbench: N sleeping leaders, each in its own
     scope cgroup, registered one call after another);
  3. times `mctl list` and `machinectl list` against both, and reads both RSS again;
  4. kills the leaders and times until mctld's list is empty again.
Nothing is left: the buses, managers, leaders and cgroups go at the end.
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch import MCTL, RELEASE, ROOT  # noqa: E402

MCTLD = os.path.join(RELEASE, "mctld")
REGBENCH = os.path.join(RELEASE, "examples/regbench")
MACHINED = next((p for p in ("/lib/systemd/systemd-machined", "/usr/lib/systemd/systemd-machined")
                 if os.path.exists(p)), None)
# machinectl (and machined) refuse to run unless /run/systemd/system exists.
PRIVATE_RUN = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system /run/systemd/machines && exec "$@"',
               "sh"]

# The test suite's private system-like bus (tests/common TestBus).
with open(os.path.join(ROOT, "tests/data/system-bus.conf.in")) as _f:
    BUS_CONF = _f.read()
# machined's own policy file is not installed under a plain dbus config; allow it here.
MACHINED_POLICY = """<policy user="root">
    <allow own="org.freedesktop.machine1"/>
    <allow send_destination="org.freedesktop.machine1"/>
  </policy>"""


def cgroup_parent():
    """Where the leaders' scope cgroups go: the cgroup2 hierarchy systemd reads units from."""
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(root, "cgroup.procs")) and os.path.exists(
                os.path.join(root, "cgroup.controllers")):
            return os.path.join(root, "mctl-bench.slice")
    sys.exit("no cgroup2 hierarchy found")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Stack:
    """Processes to end (by pid, ours only) and paths to remove, in reverse order."""

    def __init__(self):
        self.procs, self.dirs = [], []

    def close(self):
        for p in reversed(self.procs):
            if p.stdin:
                p.stdin.close()  # regbench ends its leaders when its input closes
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for d in reversed(self.dirs):
            if d.startswith("/sys/fs/cgroup"):
                if os.path.isdir(d):
                    for e in os.scandir(d):
                        if e.is_dir(follow_symlinks=False):
                            os.rmdir(e.path)
                    os.rmdir(d)
            else:
                shutil.rmtree(d, ignore_errors=True)


def start_bus(stack, scratch, name, extra):
    socket = os.path.join(scratch, f"{name}.sock")
    conf = os.path.join(scratch, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(BUS_CONF.replace("@SOCKET@", socket).replace("@EXTRA@", extra))
    p = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stack.procs.append(p)
    p.stdout.readline()
    return f"unix:path={socket}"


def wait_for_name(address, name):
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(["busctl", "--system", "status", name], env=env, capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.02)
    sys.exit(f"{name} did not appear on {address}")


def timed(cmd, address, runs, expect_lines=None):
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    samples, out = [], ""
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {r.stderr}")
        out = r.stdout
    if expect_lines is not None and len(out.splitlines()) < expect_lines:
        sys.exit(f"{' '.join(cmd)} listed only {len(out.splitlines())} lines")
    return statistics.median(samples) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--state-on", help="keep both managers' state in this directory (default: tmpfs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root")
    for p in (MCTL, MCTLD, REGBENCH):
        if not os.path.exists(p):
            sys.exit("build first: cargo build --release --examples")
    stack = Stack()
    scratch = tempfile.mkdtemp(prefix="mctl-bench-manager.")
    stack.dirs.append(scratch)
    try:
        run(args, stack, scratch)
    finally:
        stack.close()


def run(args, stack, scratch):
    policy = f'<include>{os.path.join(ROOT, "dbus/org.mctl.Machine1.conf")}</include>'
    mctl_bus = start_bus(stack, scratch, "mctl", policy)
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=mctl_bus)
    # State on a tmpfs, as /run is on a systemd host (and as machined's is here).
    state = tempfile.mkdtemp(prefix="mctl-bench-state.", dir=args.state_on or "/dev/shm")
    stack.dirs.append(state)
    private_run = PRIVATE_RUN
    if args.state_on:
        machined_run = tempfile.mkdtemp(prefix="mctl-bench-machined-run.", dir=args.state_on)
        stack.dirs.append(machined_run)
        private_run = [a.replace("mount -t tmpfs tmpfs /run", f"mount --bind {machined_run} /run")
                       for a in PRIVATE_RUN]
    print(f"state on {args.state_on or '/dev/shm (tmpfs)'}")
    mctld = subprocess.Popen([MCTLD, "--machined-compat", "--state-dir", state,
                              "--pool-path", os.path.join(scratch, "pool")],
                             env=env, stderr=subprocess.DEVNULL)
    stack.procs.append(mctld)
    wait_for_name(mctl_bus, "org.freedesktop.machine1")

    machined = machined_bus = None
    if MACHINED:
        machined_bus = start_bus(stack, scratch, "machined", MACHINED_POLICY)
        machined = subprocess.Popen(private_run + [MACHINED], env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=machined_bus),
                                    stderr=subprocess.DEVNULL)
        stack.procs.append(machined)
        wait_for_name(machined_bus, "org.freedesktop.machine1")
    time.sleep(0.5)
    print(f"managers idle (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs):")
    print(f"  RSS: mctld {rss_kib(mctld.pid) / 1024:6.2f} MiB" +
          (f"   systemd-machined {rss_kib(machined.pid) / 1024:6.2f} MiB" if machined else ""))

    cg = cgroup_parent()
    os.mkdir(cg)
    stack.dirs.append(cg)
    managers = [f"{mctl_bus}=org.mctl.Machine1"] + ([f"{machined_bus}=org.freedesktop.machine1"] if machined else [])
    reg = subprocess.Popen([REGBENCH, "--count", str(args.count), "--cgroup", cg] + managers,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stack.procs.append(reg)
    results = {}
    for line in reg.stdout:
        if line.strip() == "ready":
            break
        r = json.loads(line)
        if "error" in r:
            sys.exit(f"registering with {r['destination']} failed: {r['error']}")
        results[r["destination"]] = r["register_ms"]
    print(f"{args.count} registrations, one call after another:")
    print(f"  mctld {results['org.mctl.Machine1']:8.1f} ms" +
          (f"   systemd-machined {results['org.freedesktop.machine1']:8.1f} ms" if machined else ""))

    n = args.count
    print(f"listing {n} machines, median of {args.runs}:")
    t_mctl = timed([MCTL, "list", "--no-legend"], mctl_bus, args.runs, n)
    t_mctl_json = timed([MCTL, "list", "-o", "json"], mctl_bus, args.runs)
    t_mc_mctld = timed(PRIVATE_RUN + ["machinectl", "list", "--no-pager"], mctl_bus, args.runs, n)
    busctl = ["busctl", "--system", "call", "org.mctl.Machine1", "/org/freedesktop/machine1"]
    t_names = timed(busctl + ["org.freedesktop.machine1.Manager", "ListMachines"], mctl_bus, args.runs)
    t_detailed = timed(busctl + ["org.mctl.Manager1", "ListMachinesDetailed"], mctl_bus, args.runs)
    print(f"  mctl list             {t_mctl:8.1f} ms   (-o json {t_mctl_json:.1f} ms; busctl: ListMachines "
          f"{t_names:.1f} ms, ListMachinesDetailed {t_detailed:.1f} ms)")
    line = f"  machinectl list       {t_mc_mctld:8.1f} ms against mctld"
    if machined:
        t_mc_machined = timed(PRIVATE_RUN + ["machinectl", "list", "--no-pager"], machined_bus, args.runs, n)
        line += f"   {t_mc_machined:8.1f} ms against systemd-machined (ratio {t_mc_mctld / t_mc_machined:.3f})"
    print(line)
    print(f"  RSS at {n}: mctld {rss_kib(mctld.pid) / 1024:6.2f} MiB" +
          (f"   systemd-machined {rss_kib(machined.pid) / 1024:6.2f} MiB" if machined else ""))

    # The leaders end; mctld drops each machine as its pidfd reports the exit.
    t = time.perf_counter()
    reg.stdin.close()
    reg.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = subprocess.run([MCTL, "list", "--no-legend"], env=env, capture_output=True, text=True)
        if r.returncode == 0 and not r.stdout.strip():
            break
        time.sleep(0.01)
    print(f"  {n} leaders killed to an empty list in mctld: {(time.perf_counter() - t) * 1000:.1f} ms "
          f"(RSS after: {rss_kib(mctld.pid) / 1024:.2f} MiB)")


if __name__ == "__main__":
    main()
