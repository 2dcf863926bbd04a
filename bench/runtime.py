#!/usr/bin/env python3
"""OCI runtime benchmark: mctl-runc side by side with runc (and crun where it runs), in one run.

    bench/runtime.py [--runs N] [--podman-runs N]

Needs root, a release build (cargo build --release), the cached busybox tree
(bootstrap/cached.sh busybox), runc, and podman with conmon for the second part. Prints the
median of each runtime and the ratio peer/mctl-runc (>= 1.0: mctl-runc is at least as fast):
  1. `create` + `start` + wait for the exit + `delete` of /bin/true from a bundle (the busybox
     tree, runc's default config.json, cgroups under /mctl-bench-oci);
  2. `podman run --rm` of /bin/true (an image imported from the same tree; storage, run root
     and containers.conf of the bench's own, no network), with `--runtime` set to each.
crun refuses hybrid cgroup hosts; it is measured only where a trial run succeeds.
Everything is made in a temporary directory and removed afterwards.
"""
import argparse, json, os, select, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch import RELEASE, ROOT, remove_cgroup  # noqa: E402

MCTL_RUNC = os.path.join(RELEASE, "mctl-runc")
CGROUP_PARENT = "mctl-bench-oci"


def busybox():
    out = subprocess.run([os.path.join(ROOT, "bootstrap/cached.sh"), "busybox"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def quiet(cmd, **kw):
    """Runs cmd; its stderr in a file (a container's init inherits the runtime's stdio, so a
    pipe would stay open while the container lives)."""
    with tempfile.TemporaryFile() as err:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, **kw)
        err.seek(0)
        p.stderr = err.read()
    return p


def make_bundle(work, tree):
    bundle = os.path.join(work, "bundle")
    os.makedirs(bundle)
    subprocess.run(["cp", "-a", tree, os.path.join(bundle, "rootfs")], check=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    with open(path, "w") as f:
        json.dump(config, f)
    return bundle, path, config


def lifecycle(binary, root, bundle, config_path, config, cid):
    """create + start + wait + delete; the seconds it took."""
    config["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
    with open(config_path, "w") as f:
        json.dump(config, f)
    pid_file = os.path.join(root, f"{cid}.pid")
    t = time.perf_counter()
    for args in (["create", "--bundle", bundle, "--pid-file", pid_file, cid], ["start", cid]):
        p = quiet([binary, "--root", root] + args)
        if p.returncode != 0:
            raise RuntimeError(f"{binary} {args[0]}: {p.stderr.decode().strip()}")
        if args[0] == "create":
            with open(pid_file) as f:
                pidfd = os.pidfd_open(int(f.read()))
    select.select([pidfd], [], [], 10)
    os.close(pidfd)
    p = quiet([binary, "--root", root, "delete", cid])
    elapsed = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{binary} delete: {p.stderr.decode().strip()}")
    os.unlink(pid_file)
    return elapsed


def runtimes():
    found = [("mctl-runc", MCTL_RUNC), ("runc", shutil.which("runc"))]
    if shutil.which("crun"):
        found.append(("crun", shutil.which("crun")))
    return [(n, b) for n, b in found if b]


def usable(name, binary, work, bundle, config_path, config):
    root = os.path.join(work, f"root-{name}")
    os.makedirs(root, exist_ok=True)
    try:
        lifecycle(binary, root, bundle, config_path, config, f"trial-{name}")
        return True
    except RuntimeError as e:
        print(f"  {name}: not measured ({e})")
        quiet([binary, "--root", root, "delete", "--force", f"trial-{name}"])
        return False


def bench_bundles(work, tree, runs):
    bundle, config_path, config = make_bundle(work, tree)
    print(f"create+start+wait+delete of /bin/true, median of {runs}:")
    rts = [(n, b) for n, b in runtimes() if usable(n, b, work, bundle, config_path, config)]
    medians = {}
    for name, binary in rts:
        root = os.path.join(work, f"root-{name}")
        samples = [lifecycle(binary, root, bundle, config_path, config, f"b{i}") for i in range(runs)]
        medians[name] = statistics.median(samples)
    report(medians)
    return rts


def report(medians):
    ours = medians.get("mctl-runc")
    for name, m in medians.items():
        ratio = f"  peer/mctl-runc {m / ours:.2f}" if ours and name != "mctl-runc" else ""
        print(f"  {name:10} {m * 1000:8.1f} ms{ratio}")


def bench_podman(work, tree, rts, runs):
    conf = os.path.join(work, "containers.conf")
    with open(conf, "w") as f:
        f.write('[containers]\nnetns = "none"\n'
                'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    runroot = tempfile.mkdtemp(prefix="mbo-", dir="/tmp")
    env = dict(os.environ, CONTAINERS_CONF=conf)
    base = ["podman", "--root", os.path.join(work, "storage"), "--runroot", runroot,
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"]
    try:
        tar = os.path.join(work, "bb.tar")
        subprocess.run(["tar", "-C", tree, "-cf", tar, "."], check=True)
        subprocess.run(base + ["import", tar, "localhost/bench-bb"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"podman run --rm /bin/true, median of {runs}:")
        medians = {}
        for name, binary in rts:
            cmd = base + ["--runtime", binary, "run", "--rm", "localhost/bench-bb", "/bin/true"]
            samples = []
            for _ in range(runs):
                t = time.perf_counter()
                p = quiet(cmd, env=env)
                samples.append(time.perf_counter() - t)
                if p.returncode != 0:
                    raise SystemExit(f"podman with {name}: {p.stderr.decode().strip()}")
            medians[name] = statistics.median(samples)
        report(medians)
    finally:
        quiet(base + ["rm", "--all", "--force"], env=env)
        quiet(base + ["system", "reset", "--force"], env=env)
        shutil.rmtree(runroot, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--podman-runs", type=int, default=15)
    args = ap.parse_args()
    tree = busybox()
    if os.path.exists("/sys/fs/cgroup/cgroup.procs"):  # pure cgroup v2
        hierarchies = ["/sys/fs/cgroup"]
    else:
        hierarchies = ["/sys/fs/cgroup/" + d for d in os.listdir("/sys/fs/cgroup")] + ["/sys/fs/cgroup/unified"]
    ours = [os.path.join(h, d) for h in hierarchies for d in (CGROUP_PARENT, "libpod_parent")
            if os.path.isdir(h) and not os.path.exists(os.path.join(h, d))]
    work = tempfile.mkdtemp(prefix="mctl-bench-runtime-", dir="/var/tmp")
    try:
        rts = bench_bundles(work, tree, args.runs)
        if args.podman_runs and shutil.which("podman"):
            bench_podman(work, tree, rts, args.podman_runs)
    finally:
        for name, binary in runtimes():  # containers an interrupted run left
            root = os.path.join(work, f"root-{name}")
            if os.path.isdir(root):
                ids = subprocess.run([binary, "--root", root, "list", "-q"], capture_output=True,
                                     text=True, stdin=subprocess.DEVNULL).stdout.split()
                for cid in ids:
                    quiet([binary, "--root", root, "delete", "--force", cid])
        shutil.rmtree(work, ignore_errors=True)
        for cg in ours:  # the parents the runs made, not ones that were there before
            try:
                remove_cgroup(cg)
            except OSError as e:
                print(f"cannot remove {cg}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
