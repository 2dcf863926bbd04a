#!/usr/bin/env python3
"""Density: boot bookworm guests one after another until boot-to-ready passes 5 s, host memory
runs short or --max is reached, with mctl and then with systemd-nspawn, in one run. Records the
count, the host memory each guest costs (MemAvailable before and after), and the launcher's own
memory per guest (proportional set size of the launchers, plus mctld's for mctl). With the mctl
guests running, measures `mctl top`'s own CPU use at a 1 s refresh (and mctld's while it serves).

    bench/density.py [--max N] [--top-seconds S]

Needs root, a release build (cargo build --release) and the cached Debian tree. Guests boot
with --volatile=overlay (a tmpfs overlay over the shared tree, for both), on a D-Bus daemon and
an mctld of the bench's own; everything is stopped and removed afterwards.
"""
import argparse, os, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launch  # noqa: E402
import manager  # noqa: E402

MCTLD = os.path.join(launch.RELEASE, "mctld")


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Guest:
    def __init__(self, cmd, scratch, i, env, cgroups):
        self.sock_path = os.path.join(scratch, f"notify-{i}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.settimeout(60)
        env = dict(env, NOTIFY_SOCKET=self.sock_path)

        def enter():
            for cg in cgroups:
                with open(cg + "/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))

        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=enter if cgroups else None)
        try:
            while "READY=1" not in self.sock.recv(4096).decode().splitlines():
                pass
            self.ready = time.perf_counter() - t0
        except socket.timeout:
            self.ready = float("inf")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()

    def wait(self):
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def fill(label, make_cmd, scratch, args, env, cgroups_for, extra_pss=lambda: 0):
    guests, before = [], mem_available_kib()
    try:
        while len(guests) < args.max:
            i = len(guests)
            g = Guest(make_cmd(i), scratch, f"{label}-{i}", env, cgroups_for(i))
            guests.append(g)
            reason = ("boot took over 5 s" if g.ready > 5 else "the launcher failed" if g.proc.poll() is not None
                      else "host memory ran short" if mem_available_kib() < 1 << 20 else None)
            if reason:
                break
        else:
            reason = f"--max {args.max} reached"
        running = [g for g in guests if g.proc.poll() is None and g.ready <= 5]
        n = max(len(running), 1)
        time.sleep(5)  # let the guests settle before memory is measured
        host = (before - mem_available_kib()) / n
        own = (sum(pss_kib(g.proc.pid) for g in running) + extra_pss()) / n
        last = guests[-1].ready
        print(f"  {label:6} {len(running):4} guests  last boot {last:5.2f} s  host memory/guest "
              f"{host/1024:7.1f} MiB  own memory/guest {own/1024:6.2f} MiB  (stopped: {reason}; "
              f"fs.inotify.max_user_instances={open('/proc/sys/fs/inotify/max_user_instances').read().strip()})")
        return len(running), host, own, guests
    except BaseException:
        stop_all(guests)
        raise


def stop_all(guests):
    for g in guests:
        g.stop()
    for g in guests:
        g.wait()


def top_cpu(seconds, env, mctld_pid):
    hz = os.sysconf("SC_CLK_TCK")
    d0 = cpu_ticks(mctld_pid)
    t0 = time.perf_counter()
    r0 = os.times()
    subprocess.run([launch.MCTL, "top", "--batch", "-d", "1", "-n", str(seconds)], env=env,
                   stdout=subprocess.DEVNULL, check=True)
    r1 = os.times()
    wall = time.perf_counter() - t0
    top = (r1.children_user + r1.children_system - r0.children_user - r0.children_system) / wall
    mctld = (cpu_ticks(mctld_pid) - d0) / hz / wall
    return top * 100, mctld * 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", type=int, default=50)
    ap.add_argument("--top-seconds", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root")
    if not os.path.exists(launch.MCTL):
        sys.exit("build first: cargo build --release")
    src = launch.tree()
    stack = manager.Stack()
    try:
        with tempfile.TemporaryDirectory(prefix="mctl-bench-", dir="/var/tmp") as scratch:
            run(args, src, scratch, stack)
    finally:
        stack.close()


def run(args, src, scratch, stack):
    policy = f'<include>{os.path.join(launch.ROOT, "dbus/org.mctl.Machine1.conf")}</include>'
    address = manager.start_bus(stack, scratch, "bus", policy)
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address, MCTL_RUNTIME_DIR=os.path.join(scratch, "run"))
    mctld = subprocess.Popen([MCTLD, "--state-dir", os.path.join(scratch, "state")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.procs.append(mctld)
    manager.wait_for_name(address, "org.mctl.Machine1")
    print(f"density: bookworm guests with --volatile=overlay, one after another (max {args.max}):")
    mctl = lambda i: [launch.MCTL, "boot", "-q", "--console=passive", "--volatile=overlay",
                      "-M", f"dens-{i}", "-D", src]
    n, _, _, guests = fill("mctl", mctl, scratch, args, env, lambda i: [], lambda: pss_kib(mctld.pid))
    try:
        top, served = top_cpu(args.top_seconds, env, mctld.pid)
        print(f"  mctl top with {n} machines, 1 s refresh: top {top:.2f}% of a core, mctld {served:.2f}%")
    finally:
        stop_all(guests)
    # nspawn --keep-unit puts its payload beside itself: each guest gets a cgroup of its own.
    roots = [d for d in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd") if os.path.exists(d + "/cgroup.procs")]
    if not roots:
        roots = ["/sys/fs/cgroup"]

    def cgroups_for(i):
        out = []
        for r in roots:
            cg = os.path.join(r, f"mctl-bench-density-{i}")
            os.makedirs(cg, exist_ok=True)
            out.append(cg)
        return out

    nspawn = lambda i: ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--console=passive",
                        "--volatile=overlay", "-M", f"dens-{i}", "-b", "-D", src]
    try:
        _, _, _, guests = fill("nspawn", nspawn, scratch, args, env, cgroups_for)
        stop_all(guests)
    finally:
        for r in roots:
            for e in os.scandir(r):
                if e.name.startswith("mctl-bench-density-"):
                    launch.remove_cgroup(e.path)


if __name__ == "__main__":
    main()
