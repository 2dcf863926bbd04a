#!/usr/bin/env python3
"""Writes src/bin/launch-path.order: the functions a launch runs, for the linker to lay out together.

    bench/order-launch-path.py [--mctl BIN] [--launches N]

Needs root, perf (Debian's linux-perf), the cached Debian tree (bootstrap/cached.sh debian
bookworm) and a release build of mctl (by default target/<host>/release/mctl). It samples the
user-space code of N `mctl run /bin/true` launches (the launcher, its outer child and PID 1 up
to the exec) and lists every function sampled, most samples first, by its linker (mangled)
name. Release builds link that code contiguously (see src/build.rs): scattered over 12 MB of
text, it cost each of the three processes page faults of its own.

Symbol names stay the same across builds of unchanged functions (they hash the crate's
metadata, not its path or code), so the file ages slowly; regenerate it after larger changes
to the launch path or a new Rust toolchain (the standard library's names carry its hash), and
compare with bench/ab.py.
"""
import argparse, collections, os, subprocess, sys, tempfile

import trees

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src/bin/launch-path.order")


def default_binary():
    host = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    triple = next(l.split(": ", 1)[1] for l in host.splitlines() if l.startswith("host: "))
    return os.path.join(ROOT, "target", triple, "release", "mctl")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mctl", default=None)
    ap.add_argument("--launches", type=int, default=2000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/order-launch-path.py: run as root")
    binary = os.path.abspath(args.mctl or default_binary())
    if not os.path.isfile(binary):
        sys.exit(f"bench/order-launch-path.py: no {binary}: build it with cargo build --release")
    with tempfile.TemporaryDirectory(prefix="mctl-bench-order-", dir="/var/tmp") as scratch:
        tree = trees.debian_copy(scratch)
        loop = os.path.join(scratch, "loop.sh")
        with open(loop, "w") as f:
            f.write(f"for i in $(seq {args.launches}); do {binary} run -q --register=no -D {tree} /bin/true; done\n")
        data = os.path.join(scratch, "perf.data")
        # User space only, 40 kHz: a function that runs a microsecond per launch is sampled
        # about 80 times in 2000 launches.
        subprocess.run(["perf", "record", "-q", "-F", "40000", "-e", "cpu-clock:u", "-a", "-o", data,
                        "--", "sh", loop], check=True, stdout=subprocess.DEVNULL)
        script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym", "--no-demangle"],
                                check=True, capture_output=True, text=True).stdout
    comm = os.path.basename(binary)[:15]
    counts = collections.Counter()
    for line in script.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == comm and not fields[2].startswith("["):
            counts[fields[2]] += 1
    if len(counts) < 100:
        sys.exit(f"bench/order-launch-path.py: only {len(counts)} functions sampled; is {binary} stripped?")
    ordered = sorted(counts, key=lambda s: (-counts[s], s))
    with open(OUT + ".tmp", "w") as f:
        f.write("".join(s + "\n" for s in ordered))
    os.rename(OUT + ".tmp", OUT)
    print(f"{OUT}: {len(ordered)} functions from {sum(counts.values())} samples")


if __name__ == "__main__":
    main()
