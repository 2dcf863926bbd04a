#!/usr/bin/env python3
"""Launcher benchmarks: mctl side by side with systemd-nspawn and bwrap, in one run.

    bench/launch.py [--runs N] [--boots N] [--only run,boot,ephemeral,veth] [--v2-box]

Needs root, a release build (cargo build --release) and the cached Debian tree
(bootstrap/cached.sh debian bookworm). Prints medians and the ratio mctl/peer for:
  1. `run /bin/true` in the minbase tree (nspawn --register=no --keep-unit, bwrap);
  2. boot to READY=1 and SIGTERM-to-exit of bookworm (nspawn --notify-ready=yes).
  3. boot to READY=1 of an ephemeral (-x) machine against a plain boot of the same image;
  4. what --network-veth adds to `run /bin/true` (run inside a network namespace made for it).
Every run works on private copies of the tree, removed afterwards.

--v2-box runs the same benchmarks on a pure cgroup2 host: a Debian guest booted with mctl
(bootstrap/bench-box.sh: the tree plus python3, nspawn and bwrap), which sees only cgroup2;
this script runs again inside it, in a service with a delegated cgroup, as a host's would.
"""
import argparse, contextlib, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def release_dir():
    """Where `cargo build --release` puts the binaries: target/<host tuple>/release, as the
    build names its target (.cargo/config.toml)."""
    try:
        out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout
    except OSError:  # no toolchain: inside the bench box, where --mctl names the binary
        out = ""
    host = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("host:")), "")
    return os.path.join(ROOT, "target", host, "release")


RELEASE = release_dir()
MCTL = os.path.join(RELEASE, "mctl")


def cached(recipe):
    out = subprocess.run([os.path.join(ROOT, "bootstrap/cached.sh"), recipe, "bookworm"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


# nspawn with --keep-unit leaves "payload" and "supervisor" cgroups in the cgroup it was
# started from; it runs in cgroups of the bench's own, removed afterwards.
NSPAWN_CGROUPS = [d + "/mctl-bench-nspawn" for d in
                  ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
                  if os.path.exists(d + "/cgroup.procs")]


def enter_nspawn_cgroups():
    for cg in NSPAWN_CGROUPS:
        with open(cg + "/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        if cg.startswith("/sys/fs/cgroup/mctl"):
            break  # pure cgroup v2: one hierarchy


@contextlib.contextmanager
def nspawn_cgroups():
    """The cgroups nspawn runs in during a benchmark, removed afterwards."""
    for cg in NSPAWN_CGROUPS:
        os.makedirs(cg, exist_ok=True)
    try:
        yield
    finally:
        for cg in NSPAWN_CGROUPS:
            remove_cgroup(cg)


def remove_cgroup(path):
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            remove_cgroup(entry.path)
    os.rmdir(path)


def is_nspawn(cmd):
    return cmd and cmd[0] == "systemd-nspawn"


def timed(cmds, runs):
    """Medians of each command, taking turns run by run (so a drift of the machine's speed
    affects all alike)."""
    samples = [[] for _ in cmds]
    for _ in range(runs):
        for cmd, out in zip(cmds, samples):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, preexec_fn=enter_nspawn_cgroups if is_nspawn(cmd) else None)
            out.append(time.perf_counter() - t)
    return [statistics.median(s) for s in samples]


def wait_ready(sock):
    """Reads notify messages until READY=1; returns every VAR=value seen by then."""
    seen = {}
    while seen.get("READY") != "1":
        for line in sock.recv(4096).decode().splitlines():
            var, _, value = line.partition("=")
            seen[var] = value
    return seen


def boot_once(cmd, scratch):
    """Seconds to READY=1 and from SIGTERM to exit."""
    path = os.path.join(scratch, "notify.sock")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, preexec_fn=enter_nspawn_cgroups if is_nspawn(cmd) else None)
    try:
        wait_ready(sock)
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        stop = time.perf_counter() - t1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        sock.close()
    return ready, stop


NETNS_LOOP = r"""
import json, statistics, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
cmds, runs = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for label, cmd in cmds.items():
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t)
    out[label] = statistics.median(samples)
print(json.dumps(out))
"""


def netns_timed(cmds, runs):
    """Medians of each command, run in a fresh network (and mount) namespace."""
    out = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "python3", "-c",
                          NETNS_LOOP, json.dumps(cmds), str(runs)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"a run in the test network namespace failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main():
    global MCTL
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--boots", type=int, default=11)
    ap.add_argument("--only", default="run,boot,ephemeral,veth",
                    help="comma-separated subset of: run, boot, ephemeral, veth")
    ap.add_argument("--v2-box", action="store_true", help="run inside a pure cgroup2 guest")
    ap.add_argument("--mctl", default=MCTL, help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root")
    if not os.path.exists(args.mctl):
        sys.exit("build first: cargo build --release")
    if args.v2_box:
        return in_v2_box(args)
    MCTL = args.mctl
    args.only = set(args.only.split(","))
    src = args.tree or cached("debian")
    with nspawn_cgroups():
        run_benchmarks(args, src)


def in_v2_box(args):
    """Boots the bench box with mctl and runs this script in it on the same tree and binary."""
    box_src, tree_src = cached("bench-box"), cached("debian")
    with tempfile.TemporaryDirectory(prefix="mctl-bench-box-", dir="/var/tmp") as scratch:
        box = os.path.join(scratch, "benchbox")
        subprocess.run(["cp", "-a", box_src, box], check=True)
        binds = [f"{ROOT}:/opt/mctl-src", f"{os.path.dirname(os.path.abspath(args.mctl))}:/opt/mctl-build",
                 f"{tree_src}:/opt/tree"]
        # A network namespace of its own, where it may configure links (the veth benchmark).
        cmd = [args.mctl, "boot", "-q", "--console=passive", "--register=no", "--private-network", "-D", box]
        cmd += [f"--bind-ro={b}" for b in binds]
        path = os.path.join(scratch, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(120)
        p = subprocess.Popen(cmd, env=dict(os.environ, NOTIFY_SOCKET=path), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            leader = wait_ready(sock)["X_MCTL_LEADER_PID"]
            inner = ["systemd-run", "--wait", "--pipe", "-q", "-p", "Delegate=yes", "python3",
                     "/opt/mctl-src/bench/launch.py", "--mctl", "/opt/mctl-build/" + os.path.basename(args.mctl),
                     "--tree", "/opt/tree", "--runs", str(args.runs), "--boots", str(args.boots),
                     "--only", args.only]
            print("in the pure cgroup2 bench box (a guest booted with mctl):", flush=True)
            subprocess.run(["nsenter", "-t", leader, "-m", "-u", "-i", "-p", "-C", "-r", "-w", "--"] + inner,
                           check=True, stdin=subprocess.DEVNULL)
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            sock.close()


def run_benchmarks(args, src):
    with tempfile.TemporaryDirectory(prefix="mctl-bench-", dir="/var/tmp") as scratch:
        a, b = os.path.join(scratch, "mctlbench"), os.path.join(scratch, "nspawnbench")
        for d in (a, b):
            # Without /dev's nodes, which a guest may not make (the box): every launcher
            # here mounts a /dev of its own.
            os.mkdir(d)
            subprocess.run(f"tar -C {src} --exclude=./dev/* -cf - . | tar -C {d} -xf -", shell=True, check=True)
        if "run" in args.only:
            bench_run(args, a, b)
        if "boot" in args.only:
            bench_boot(args, a, b, scratch)
        if "ephemeral" in args.only:
            bench_ephemeral(args, a, scratch)
        if "veth" in args.only:
            bench_veth(args, a)


def bench_run(args, a, b):
    print(f"run /bin/true in the minbase tree, median of {args.runs}:")
    cmds = [[MCTL, "run", "-q", "-D", a, "/bin/true"],
            ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", b, "/bin/true"]]
    if shutil.which("bwrap"):
        cmds.append(["bwrap", "--bind", a, "/", "--proc", "/proc", "--dev", "/dev",
                     "--unshare-pid", "--unshare-uts", "--unshare-ipc", "/bin/true"])
    mctl, nspawn, *bwrap = timed(cmds, args.runs)
    line = f"  mctl {mctl*1000:7.2f} ms   nspawn {nspawn*1000:7.2f} ms   ratio {mctl/nspawn:.3f}"
    for bw in bwrap:
        line += f"   bwrap {bw*1000:7.2f} ms   mctl/bwrap {mctl/bw:.2f}"
    print(line)


def bench_boot(args, a, b, scratch):
    print(f"boot bookworm to READY=1, then SIGTERM to exit, median of {args.boots}:")
    m = [boot_once([MCTL, "boot", "-q", "--console=passive", "-D", a], scratch) for _ in range(args.boots)]
    n = [boot_once(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--notify-ready=yes",
                    "--console=passive", "-b", "-D", b], scratch) for _ in range(args.boots)]
    mr, ms = statistics.median(x[0] for x in m), statistics.median(x[1] for x in m)
    nr, ns = statistics.median(x[0] for x in n), statistics.median(x[1] for x in n)
    print(f"  ready: mctl {mr*1000:7.1f} ms   nspawn {nr*1000:7.1f} ms   ratio {mr/nr:.3f}")
    print(f"  stop:  mctl {ms*1000:7.1f} ms   nspawn {ns*1000:7.1f} ms   ratio {ms/ns:.3f}")


def bench_ephemeral(args, a, scratch):
    print(f"ephemeral (-x, overlay) against plain boot of the same image to READY=1, median of {args.boots}:")
    e = [boot_once([MCTL, "boot", "-q", "-x", "--console=passive", "-D", a], scratch) for _ in range(args.boots)]
    p = [boot_once([MCTL, "boot", "-q", "--console=passive", "-D", a], scratch) for _ in range(args.boots)]
    er, pr = statistics.median(x[0] for x in e), statistics.median(x[0] for x in p)
    print(f"  ready: ephemeral {er*1000:7.1f} ms   plain {pr*1000:7.1f} ms   ratio {er/pr:.3f}")


def bench_veth(args, a):
    print(f"run /bin/true with and without --network-veth, in a test network namespace, median of {args.runs}:")
    base = [MCTL, "run", "-q", "--register=no", "-D", a]
    m = netns_timed({"plain": base + ["/bin/true"], "veth": base[:3] + ["--network-veth"] + base[3:] + ["/bin/true"]}, args.runs)
    print(f"  plain {m['plain']*1000:7.2f} ms   --network-veth {m['veth']*1000:7.2f} ms   added {(m['veth']-m['plain'])*1000:6.2f} ms")


if __name__ == "__main__":
    main()
