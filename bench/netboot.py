#!/usr/bin/env python3
"""Boot to first ping: `mctl boot --network-veth` against `systemd-nspawn --network-veth`
with systemd-networkd in the guest.

    bench/netboot.py [--boots N]

Needs root, a release build (cargo build --release) and the cached Debian tree
(bootstrap/cached.sh debian bookworm). Runs inside a network and mount namespace of its own
(it re-executes itself under unshare), so the host sides of the veth pairs live there and
nothing touches this machine's network namespace.

Each boot is timed from the launcher's start to the first ICMP echo reply from the guest's
address (pinged every 5 ms from the test namespace):
  - mctl: out of the box; the launcher gives both sides addresses from its pool before init
    starts, so the guest answers as soon as the pair exists (the kernel answers, before init
    has booted; READY=1 comes about 150 ms later, see bench/launch.py);
  - nspawn: what it takes there without networkd on the host: networkd enabled in the guest
    with a static address on host0, and the host side addressed by hand (by this script, as
    soon as ve-NAME appears).
"""
import argparse, os, signal, socket, statistics, struct, subprocess, sys, tempfile, time

import launch  # noqa: E402  (tree(), nspawn's cgroups)

MCTL = launch.MCTL
GUEST, HOST, PREFIX = "10.213.0.2", "10.213.0.1", 30


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident, seq):
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, checksum(head + b"mctl"), ident, seq) + b"mctl"


def first_reply(addr, deadline, on_tick=None):
    """Pings `addr` every 5 ms until it answers; returns the time of the first reply."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    ident, seq = os.getpid() & 0xFFFF, 0
    try:
        while time.perf_counter() < deadline:
            if on_tick:
                on_tick()
            seq = (seq + 1) & 0xFFFF
            try:
                sock.sendto(echo_request(ident, seq), (addr, 0))
            except OSError:
                pass  # no route yet
            until = time.perf_counter() + 0.005
            while time.perf_counter() < until:
                try:
                    pkt, (src, _) = sock.recvfrom(2048)
                except BlockingIOError:
                    time.sleep(0.0005)
                    continue
                ihl = (pkt[0] & 0x0F) * 4
                if src == addr and pkt[ihl] == 0 and struct.unpack("!H", pkt[ihl + 4:ihl + 6])[0] == ident:
                    return time.perf_counter()
        return None
    finally:
        sock.close()


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def boot_mctl(root):
    t0 = time.perf_counter()
    p = subprocess.Popen([MCTL, "boot", "-q", "--register=no", "--console=passive", "--network-veth", "-D", root],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t = first_reply(GUEST, t0 + 30)
        return None if t is None else t - t0
    finally:
        stop(p)


def boot_nspawn(root, name):
    link = f"ve-{name}"[:15]
    configured = []

    def address_host_side():
        if configured:
            return
        r = subprocess.run(["ip", "addr", "add", f"{HOST}/{PREFIX}", "dev", link], capture_output=True)
        if r.returncode == 0:
            # ARP retries every 10 ms instead of every second: otherwise a probe sent just
            # before networkd has given the guest its address delays the first reply by up
            # to a second, and the figure measures the backoff. (mctl's guest has its address
            # before the host side is up, so its first probe is answered.)
            with open(f"/proc/sys/net/ipv4/neigh/{link}/retrans_time_ms", "w") as f:
                f.write("10")
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
            configured.append(True)

    t0 = time.perf_counter()
    p = subprocess.Popen(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--console=passive",
                          "--network-veth", "-b", "-D", root],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=launch.enter_nspawn_cgroups)
    try:
        t = first_reply(GUEST, t0 + 30, address_host_side)
        return None if t is None else t - t0
    finally:
        stop(p)


def with_networkd(root):
    """Enables networkd in the guest with a static address on host0 (nspawn's tree)."""
    net = os.path.join(root, "etc/systemd/network")
    os.makedirs(net, exist_ok=True)
    with open(os.path.join(net, "10-host0.network"), "w") as f:
        # Its best case: no link-local addressing, no duplicate address detection.
        f.write(f"[Match]\nName=host0\n\n[Network]\nGateway={HOST}\nLinkLocalAddressing=no\n\n"
                f"[Address]\nAddress={GUEST}/{PREFIX}\nDuplicateAddressDetection=none\n")
    for unit, target in (("systemd-networkd.service", "multi-user.target.wants"),
                         ("systemd-networkd.socket", "sockets.target.wants")):
        wants = os.path.join(root, "etc/systemd/system", target)
        os.makedirs(wants, exist_ok=True)
        link = os.path.join(wants, unit)
        if not os.path.lexists(link):
            os.symlink(f"/lib/systemd/system/{unit}", link)


def inside(args):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    src = launch.tree()
    with tempfile.TemporaryDirectory(prefix="mctl-bench-net-", dir="/var/tmp") as scratch:
        a, b = os.path.join(scratch, "mctlnet"), os.path.join(scratch, "nspawnnet")
        for d in (a, b):
            subprocess.run(["cp", "-a", src, d], check=True)
        with_networkd(b)
        m = [boot_mctl(a) for _ in range(args.boots)]
        n = [boot_nspawn(b, "nspawnnet") for _ in range(args.boots)]
        if None in m or None in n:
            sys.exit(f"a guest never answered: mctl {m}, nspawn {n}")
        mm, nm = statistics.median(m), statistics.median(n)
        print(f"boot to first ping of the guest, median of {args.boots}:")
        print(f"  mctl --network-veth {mm*1000:7.1f} ms   nspawn --network-veth + networkd {nm*1000:7.1f} ms"
              f"   ratio {mm/nm:.3f}")
        print(f"  (mctl min {min(m)*1000:.1f} max {max(m)*1000:.1f};"
              f" nspawn min {min(n)*1000:.1f} max {max(n)*1000:.1f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=7)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root")
    if not os.path.exists(MCTL):
        sys.exit("build first: cargo build --release")
    if os.environ.get("MCTL_BENCH_IN_NETNS") != "1":
        env = dict(os.environ, MCTL_BENCH_IN_NETNS="1")
        os.execvpe("unshare", ["unshare", "--net", "--mount", "--propagation", "private",
                               sys.executable] + sys.argv, env)
    with launch.nspawn_cgroups():
        inside(args)


if __name__ == "__main__":
    main()
