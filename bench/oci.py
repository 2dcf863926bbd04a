#!/usr/bin/env python3
"""OCI pull benchmark: mctl pull-oci side by side with skopeo copy + umoci unpack and with
podman pull, in one run.

    bench/oci.py [--runs N] [--dir DIR]

Needs root, a release build (cargo build --release), the cached Debian tree
(bootstrap/cached.sh debian bookworm), docker-registry, skopeo, umoci and podman (apt).
The Debian tree is made into a three-layer image with umoci (the tree without /usr/share,
then /usr/share, then a small layer that deletes a file and adds one), pushed with skopeo to
a distribution registry on loopback. Each timed run starts from nothing (a fresh blob cache
and image store for mctl, a fresh layout and bundle for skopeo + umoci, a fresh storage root
for podman), so every side downloads every layer, checks it, and unpacks it into a tree
(podman: its layer store). Prints the median of each side and the ratio peer/mctl (>= 1.0:
mctl is at least as fast).
"""
import argparse, os, shutil, statistics, subprocess, tempfile, time, urllib.request

from images import free_port  # noqa: E402
from launch import MCTL, tree  # noqa: E402


def run(cmd, env=None, cwd=None):
    subprocess.run(cmd, check=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)


def start_registry(work):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    config = os.path.join(work, "registry.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {work}/registry\n"
                f"http:\n  addr: {addr}\n  secret: bench\n")
    reg = subprocess.Popen(["docker-registry", "serve", config], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://{addr}/v2/", timeout=1)
            return reg, addr
        except OSError:
            time.sleep(0.05)
    reg.kill()
    raise SystemExit("docker-registry did not start")


def build_image(work, debian, addr):
    """Three layers from the Debian tree, pushed to the registry as bench/debian:v1."""
    layout = os.path.join(work, "layout")
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:v1"])
    bundle = os.path.join(work, "bundle")
    rootfs = os.path.join(bundle, "rootfs")

    def layer(fill):
        run(["umoci", "unpack", "--image", f"{layout}:v1", bundle])
        fill()
        run(["umoci", "repack", "--image", f"{layout}:v1", bundle])
        shutil.rmtree(bundle)

    def base():
        run(["tar", "-C", debian, "--exclude=./usr/share", "-cf", f"{work}/base.tar", "."])
        run(["tar", "--numeric-owner", "-C", rootfs, "-xpf", f"{work}/base.tar"])
        os.unlink(f"{work}/base.tar")

    def share():
        run(["cp", "-a", os.path.join(debian, "usr/share"), os.path.join(rootfs, "usr/share")])

    def small():
        os.unlink(os.path.join(rootfs, "etc/motd"))
        with open(os.path.join(rootfs, "etc/bench"), "w") as f:
            f.write("layer three\n")

    for fill in (base, share, small):
        layer(fill)
    run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
         f"docker://{addr}/bench/debian:v1"])
    shutil.rmtree(layout)
    out = subprocess.run(["du", "-sb", f"{work}/registry"], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def timed(cmd, fresh, env=None):
    scratch = fresh()
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    run(cmd(scratch), env=env(scratch) if env else None)
    dt = time.perf_counter() - t
    unmount_under(scratch)
    shutil.rmtree(scratch)
    return dt


def unmount_under(path):
    """podman's storage bind-mounts its overlay directory onto itself."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(path + "/")]
    for p in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", p], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    debian = tree()
    work = tempfile.mkdtemp(prefix="mctl-bench-oci-", dir=a.dir)
    reg = None
    try:
        reg, addr = start_registry(work)
        size = build_image(work, debian, addr)
        ref = f"{addr}/bench/debian:v1"
        print(f"image: 3 layers, {size / (1 << 20):.1f} MiB compressed in the registry", flush=True)

        def fresh():
            return tempfile.mkdtemp(prefix="run-", dir=work)

        def mctl_env(s):
            e = dict(os.environ, MCTL_IMAGE_STORE=f"{s}/store", MCTL_PULL_CACHE=f"{s}/cache")
            os.makedirs(f"{s}/store")
            return e

        sides = {
            "mctl pull-oci": (lambda s: [MCTL, "pull-oci", ref, "bench"], mctl_env),
            "skopeo copy + umoci unpack": (lambda s: ["sh", "-c",
                f"skopeo copy -q --src-tls-verify=false docker://{ref} oci:{s}/layout:v1 && "
                f"umoci unpack --image {s}/layout:v1 {s}/bundle"], None),
            # (podman wants a runroot path under 50 characters.)
            "podman pull": (lambda s: ["sh", "-c",
                f"rr=$(mktemp -d /tmp/mbo-XXXXXX) && podman --root {s}/root --runroot $rr "
                f"pull -q --tls-verify=false {ref}; st=$?; rm -rf $rr; exit $st"], None),
        }
        times = {k: [] for k in sides}
        for _ in range(a.runs):
            for name, (cmd, env) in sides.items():
                times[name].append(timed(cmd, fresh, env))
        ours = statistics.median(times["mctl pull-oci"])
        for name, samples in times.items():
            m = statistics.median(samples)
            ratio = "" if name.startswith("mctl") else f"   ratio {m / ours:5.2f}x"
            print(f"  {name:28s} {m:7.3f} s{ratio}   samples {['%.3f' % x for x in samples]}", flush=True)
    finally:
        if reg:
            reg.terminate()
            reg.wait()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
