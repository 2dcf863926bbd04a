#!/usr/bin/env python3
"""Image benchmarks: mctl side by side with GNU tar and curl | tar, in one run.

    bench/images.py [--runs N] [--dir DIR] [--tmpfs]

Needs root, a release build (cargo build --release), the cached Debian tree
(bootstrap/cached.sh debian bookworm), GNU tar, zstd and curl. Prints the median time of each
side and the throughput ratio mctl/peer (>= 1.0: mctl is at least as fast):
  1. import-tar of a tarball of the Debian tree vs `tar --numeric-owner -xpf` of the same
     archive, plain and zstd-compressed;
  2. pull-tar from a loopback HTTP server (python's http.server) vs `curl -s URL | tar -x`
     from the same server; mctl with --verify=no (like curl) and with --verify=checksum, each
     run with an empty download cache (so it downloads, and writes the cache copy), plain
     and zstd (`curl | tar --zstd -x`: GNU tar runs zstd as a second process).
Every run extracts into a fresh directory on the same filesystem (--dir, default /var/tmp),
removed afterwards, untimed; `sync` runs before each timed run so that writeback of one run
does not land in the next. --tmpfs runs everything on a tmpfs in a private mount namespace
(the tools' own cost, without the disk's).
"""
import argparse, hashlib, os, shutil, socket, statistics, subprocess, sys, tempfile, time

from launch import MCTL, ROOT, tree  # noqa: E402  (the paths and the cached Debian tree)


def run(cmd, env=None):
    subprocess.run(cmd, check=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def timed(cmd, prepare, cleanup, env=None):
    prepare()
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    run(cmd, env)
    dt = time.perf_counter() - t
    cleanup()
    return dt


def side_by_side(title, size, ours, peer, runs):
    """Alternates the two sides; returns (median ours, median peer)."""
    a, b = [], []
    for _ in range(runs):
        a.append(ours())
        b.append(peer())
    ma, mb = statistics.median(a), statistics.median(b)
    mib = size / (1 << 20)
    print(f"{title}\n  mctl {ma:7.3f} s ({mib / ma:7.1f} MiB/s)   peer {mb:7.3f} s ({mib / mb:7.1f} MiB/s)"
          f"   ratio {mb / ma:5.2f}x   samples mctl {['%.3f' % x for x in a]} peer {['%.3f' % x for x in b]}",
          flush=True)
    return ma, mb


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--tmpfs", action="store_true")
    ap.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("images.py: run as root")
    if not os.path.exists(MCTL):
        sys.exit("images.py: build first: cargo build --release")
    if args.tmpfs and not args.in_namespace:
        # The tmpfs lives in a private mount namespace: it vanishes with this process.
        os.execvp("unshare", ["unshare", "-m", "--propagation", "private", sys.executable,
                              os.path.abspath(__file__), "--in-namespace", "--tmpfs",
                              "--runs", str(args.runs)])
    src = tree()
    work = tempfile.mkdtemp(prefix="mctl-bench-images-", dir="/var/tmp")
    try:
        if args.tmpfs:
            base = os.path.join(work, "tmpfs")
            os.mkdir(base)
            run(["mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", base])
        else:
            base = tempfile.mkdtemp(prefix="mctl-bench-out-", dir=args.dir)
        www = os.path.join(work, "www")
        os.mkdir(www)
        plain = os.path.join(www, "deb.tar")
        run(["tar", "--numeric-owner", "-C", src, "-cf", plain, "."])
        zst = plain + ".zst"
        run(["zstd", "-q", "-T0", plain, "-o", zst])
        with open(os.path.join(www, "SHA256SUMS"), "w") as f:
            for p in (plain, zst):
                h = hashlib.sha256(open(p, "rb").read()).hexdigest()
                f.write(f"{h}  {os.path.basename(p)}\n")
        store = os.path.join(base, "store")
        os.mkdir(store)
        cache = os.path.join(base, "cache")
        out = os.path.join(base, "x")
        env = dict(os.environ, MCTL_IMAGE_STORE=store, MCTL_PULL_CACHE=cache, MCTL_LOG="warn")
        for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env.pop(k, None)

        def fresh_out():
            shutil.rmtree(out, ignore_errors=True)
            os.mkdir(out)

        def no_image():
            shutil.rmtree(os.path.join(store, "d"), ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)

        def gone():
            shutil.rmtree(out, ignore_errors=True)

        print(f"Debian tree {src}: {os.path.getsize(plain) / (1 << 20):.1f} MiB tar, "
              f"{os.path.getsize(zst) / (1 << 20):.1f} MiB tar.zst; output on "
              f"{'tmpfs' if args.tmpfs else base}; {args.runs} runs each, medians\n", flush=True)
        size = os.path.getsize(plain)
        for name, archive in (("plain", plain), ("zstd", zst)):
            side_by_side(
                f"import-tar ({name}) vs tar -x",
                size,
                lambda: timed([MCTL, "import-tar", archive, "d"], no_image, no_image, env),
                lambda: timed(["tar", "--numeric-owner", "-xpf", archive, "-C", out], fresh_out, gone),
                args.runs)

        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", www], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            for name in ("deb.tar", "deb.tar.zst"):
                url = f"http://127.0.0.1:{port}/{name}"
                zflag = "--zstd " if name.endswith(".zst") else ""
                curl = ["sh", "-c", f"curl -sf '{url}' | tar {zflag}--numeric-owner -xpf - -C '{out}'"]
                for verify in ("no", "checksum"):
                    side_by_side(
                        f"pull-tar --verify={verify} {name} vs curl | tar -x",
                        size,
                        lambda: timed([MCTL, "pull-tar", f"--verify={verify}", url, "d"], no_image, no_image, env),
                        lambda: timed(curl, fresh_out, gone),
                        args.runs)
        finally:
            server.terminate()
            server.wait()
    finally:
        if args.tmpfs:
            subprocess.run(["umount", "-l", os.path.join(work, "tmpfs")])
        else:
            shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
