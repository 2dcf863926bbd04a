#!/usr/bin/env python3
"""User namespace benchmark: boot to READY=1 with -U against a plain boot, and against
systemd-nspawn -U on the same tree, in one run.

    bench/userns.py [--boots N] [--padding FILES]

Needs root, a release build (cargo build --release) and the cached Debian tree. mctl -U mounts
the image idmapped, so its cost does not depend on the image; nspawn -U chowns the tree on its
first boot (and finds it chowned on later ones). `--padding` adds that many small files to the
tree, to show the difference on a larger image. Every run works on private copies, removed
afterwards.
"""
import argparse, os, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launch  # noqa: E402  (shares the boot timing and nspawn cgroup helpers)


def pad(tree, files):
    d = os.path.join(tree, "usr/share/mctl-bench-padding")
    os.makedirs(d)
    for i in range(files):
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write("x")


def ready_ms(cmd, scratch, boots):
    return statistics.median(boot_ms(cmd, scratch) for _ in range(boots))


def boot_ms(cmd, scratch):
    # A stale "payload" cgroup of an earlier nspawn -U (owned by another range) makes the next
    # one hang: each boot starts clean.
    remove_nspawn_leftovers()
    return launch.boot_once(cmd, scratch)[0] * 1000


# nspawn -U hangs silently in a child cgroup of this hybrid host (the guest's systemd never
# prints), so it runs from the launcher's own cgroup and its --keep-unit leftovers there
# ("payload", "supervisor") are removed afterwards, as the other benchmarks do for theirs.
def remove_nspawn_leftovers():
    own = open("/proc/self/cgroup").read().splitlines()
    for line in own:
        _, ctl, path = line.split(":", 2)
        mount = {"": "/sys/fs/cgroup/unified", "name=systemd": "/sys/fs/cgroup/systemd"}.get(ctl)
        if mount is None or not os.path.isdir(mount):
            continue
        for leftover in ("payload", "supervisor"):
            launch.remove_cgroup(os.path.join(mount + path, leftover))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=11)
    ap.add_argument("--padding", type=int, default=0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root")
    if not os.path.exists(launch.MCTL):
        sys.exit("build first: cargo build --release")
    src = launch.tree()
    try:
        run(args, src)
    finally:
        remove_nspawn_leftovers()


def run(args, src):
    with tempfile.TemporaryDirectory(prefix="mctl-bench-", dir="/var/tmp") as scratch:
        a = os.path.join(scratch, "usernsbench")
        subprocess.run(["cp", "-a", src, a], check=True)
        if args.padding:
            pad(a, args.padding)
        # The range the image picks is remembered in the state directory: the bench's own.
        os.environ["MCTL_STATE_DIR"] = os.path.join(scratch, "state")
        mctl = [launch.MCTL, "boot", "-q", "--register=no", "--console=passive", "-D", a]
        print(f"boot bookworm to READY=1 (+{args.padding} files), median of {args.boots}:")
        plain = ready_ms(mctl, scratch, args.boots)
        userns = ready_ms(mctl[:2] + ["-U"] + mctl[2:], scratch, args.boots)
        print(f"  mctl plain {plain:7.1f} ms   mctl -U {userns:7.1f} ms   ratio {userns/plain:.3f}")

        # (Through env: launch.boot_once would move a bare nspawn into the bench cgroups.)
        nspawn = ["env", "systemd-nspawn", "-q", "--register=no", "--keep-unit", "--notify-ready=yes",
                  "--console=passive", "-U", "--private-users-ownership=chown", "-b", "-D"]
        firsts = []
        for i in range(min(args.boots, 3)):
            b = os.path.join(scratch, f"nspawn{i}")
            subprocess.run(["cp", "-a", a, b], check=True)
            firsts.append(boot_ms(nspawn + [b], scratch))
        first = statistics.median(firsts)
        later = ready_ms(nspawn + [os.path.join(scratch, "nspawn0")], scratch, args.boots)
        print(f"  nspawn -U first boot (chowns the tree) {first:7.1f} ms   mctl/nspawn {userns/first:.3f}")
        print(f"  nspawn -U later boots (tree chowned)   {later:7.1f} ms   mctl/nspawn {userns/later:.3f}")


if __name__ == "__main__":
    main()
