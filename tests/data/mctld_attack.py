#!/usr/bin/python3
"""Hostile D-Bus clients of mctld, for tests/mctld_attacks.rs (run as an unprivileged user).

  capexec BINARY CALLS   connect, fork; the parent execs BINARY (a file-capability copy of
                         sleep) while the child makes CALLS over the inherited connection
  calls CALLS            make CALLS on a fresh connection
  stall N CALL           N connections each send CALL at once; print "sent", then each outcome
  flood SECONDS BIG DEPTH MIB NAME
                         BIG connections pipeline GetMachine with MIB-MiB strings, BIG more
                         pipeline ListMachinesDetailed, DEPTH calls in flight on each

CALLS is JSON: [[path, interface, member, signature, [args...]], ...]. Each call prints one
line: "MEMBER ok" or "MEMBER error NAME TEXT" or "MEMBER timeout".
"""

import json
import os
import struct
import sys
import threading
import time

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call
from jeepney.io.blocking import open_dbus_connection

DEST = os.environ.get("MCTL_DEST", "org.mctl.Machine1")
MANAGER = "/org/freedesktop/machine1"


def message(path, iface, member, sig, args):
    return new_method_call(DBusAddress(path, bus_name=DEST, interface=iface), member, sig or None, tuple(args))


def outcome(member, reply):
    if reply is None:
        return f"{member} timeout"
    if reply.header.message_type == MessageType.error:
        name = reply.header.fields.get(HeaderFields.error_name, "?")
        text = reply.body[0] if reply.body else ""
        return f"{member} error {name} {text}"
    return f"{member} ok"


def call(conn, spec, timeout=10):
    try:
        reply = conn.send_and_get_reply(message(*spec), timeout=timeout)
    except TimeoutError:
        reply = None
    return outcome(spec[2], reply)


def capexec(binary, calls):
    conn = open_dbus_connection(bus="SYSTEM")
    parent = os.getpid()
    if os.fork() != 0:
        # The process the bus identified the connection by becomes privileged; the connection
        # itself lives on in the child (Python's sockets are close-on-exec).
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execv(binary, [binary, "60"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{parent}/status") as f:
            eff = next(l for l in f if l.startswith("CapEff:")).split()[1]
        if int(eff, 16) != 0:
            break
        time.sleep(0.01)
    else:
        print("parent never gained capabilities", flush=True)
        sys.exit(2)
    print(f"parent {parent} CapEff {eff}", flush=True)
    for spec in calls:
        print(call(conn, spec), flush=True)
    os._exit(0)


def calls(specs):
    conn = open_dbus_connection(bus="SYSTEM")
    for spec in specs:
        print(call(conn, spec), flush=True)


def stall(n, spec):
    conns = [open_dbus_connection(bus="SYSTEM") for _ in range(n)]
    start = time.monotonic()
    results = [None] * n

    def one(i):
        results[i] = call(conns[i], spec, timeout=10)
        results[i] += f" after {time.monotonic() - start:.2f}s"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    print("sent", flush=True)
    for t in threads:
        t.join()
    for r in results:
        print(r, flush=True)


def flood(seconds, big, depth, mib, name):
    specs = [(MANAGER, "org.freedesktop.machine1.Manager", "GetMachine", "s", [name + "x" * (mib << 20)])] * big
    specs += [(MANAGER, "org.mctl.Manager1", "ListMachinesDetailed", "", [])] * big
    counts = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(spec):
        conn = open_dbus_connection(bus="SYSTEM")
        # Serialize once and patch the serial: building a 30 MiB message per call would make the
        # flooder, not mctld, the bottleneck.
        data = bytearray(message(*spec).serialise(serial=1))
        window = threading.Semaphore(depth)
        done = threading.Event()

        def reader():
            while not done.is_set():
                try:
                    reply = conn.receive(timeout=0.5)
                except TimeoutError:
                    continue
                except Exception:
                    return
                if reply.header.message_type in (MessageType.error, MessageType.method_return):
                    key = outcome(spec[2], reply).split(" ")[:3]
                    with lock:
                        counts[" ".join(key)] = counts.get(" ".join(key), 0) + 1
                    window.release()

        r = threading.Thread(target=reader, daemon=True)
        r.start()
        serial = 1
        while time.monotonic() < stop:
            if not window.acquire(timeout=0.5):
                continue
            serial += 1
            struct.pack_into("<I", data, 8, serial)
            try:
                conn.sock.sendall(data)
            except OSError:
                break
        done.set()
        r.join()

    threads = [threading.Thread(target=run, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    print("flooding", flush=True)
    for t in threads:
        t.join()
    for k, v in sorted(counts.items()):
        print(f"{k}: {v}", flush=True)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "capexec":
        capexec(args[0], json.loads(args[1]))
    elif cmd == "calls":
        calls(json.loads(args[0]))
    elif cmd == "stall":
        stall(int(args[0]), json.loads(args[1]))
    elif cmd == "flood":
        flood(float(args[0]), int(args[1]), int(args[2]), int(args[3]), args[4])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
