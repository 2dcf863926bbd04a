#!/usr/bin/env python3
"""Blocked A/B of launchers: which of two mctl builds starts `run /bin/true` faster, bwrap beside.

    bench/ab.py OLD_MCTL NEW_MCTL [--blocks N] [--runs N]

Needs root, the cached Debian tree (bootstrap/cached.sh debian bookworm) and two release
binaries (e.g. one built from an earlier commit in a worktree). Each block runs one command
RUNS times back to back (the first three dropped, the median kept); the commands take turns
block by block, starting with a different one each block. Back-to-back runs measure what a
launch costs including what it leaves to the next one, which interleaving single launches
attributes to the wrong binary; blocks let the machine's drift (10% over minutes on a VM) fall
on all commands alike. Prints each command's median of block medians and the blocks themselves.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

import trees


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--runs", type=int, default=13)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ab.py: run as root")
    with tempfile.TemporaryDirectory(prefix="mctl-bench-ab-", dir="/var/tmp") as scratch:
        tree = trees.debian_copy(scratch)
        cmds = [[b, "run", "-q", "--register=no", "-D", tree, "/bin/true"] for b in (args.old, args.new)]
        if shutil.which("bwrap"):
            cmds.append(["bwrap", "--bind", tree, "/", "--proc", "/proc", "--dev", "/dev",
                         "--unshare-pid", "--unshare-uts", "--unshare-ipc", "/bin/true"])
        blocks = [[] for _ in cmds]
        for b in range(args.blocks):
            for i in [(b + k) % len(cmds) for k in range(len(cmds))]:
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    subprocess.run(cmds[i], check=True, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    times.append(time.perf_counter() - t)
                blocks[i].append(statistics.median(times[3:]))
    names = ["old", "new", "bwrap"]
    for name, cmd, bl in zip(names, cmds, blocks):
        print(f"{name:5} {statistics.median(bl) * 1000:7.3f} ms   blocks "
              f"{' '.join(f'{x * 1000:.2f}' for x in bl)}")
    old, new = statistics.median(blocks[0]), statistics.median(blocks[1])
    line = f"new/old {new / old:.3f}"
    if len(blocks) > 2:
        bw = statistics.median(blocks[2])
        line += f"   old/bwrap {old / bw:.2f}   new/bwrap {new / bw:.2f}"
    print(line)


if __name__ == "__main__":
    main()
