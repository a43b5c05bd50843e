#!/usr/bin/env python3
"""Side-by-side kernel profile of relays under many busy streams, per GB moved and per process.

For each relay (vsplice, the plain relay, the epoll relay), one after the other: `perf record -a
-g` while `vsplice bench client --streams S` pushes data through it to a bench server; then every
sample is charged to a role (client, server, relay, idle, other) and divided by the gigabytes
that crossed loopback meanwhile. Per role it prints samples per GB (at 999 Hz, about ms of CPU per
GB) and, for a list of kernel functions, the samples per GB with that function on the stack.

Why per role and per GB: on loopback the kernel runs a receiver's TCP processing in whichever
context sent the packet, so a relay that makes its peers work harder shows it in *their* rows;
and a faster relay moves more bytes in the same window, so raw sample counts mislead.

    perf/profile.py                  # 64 streams, vsplice / plain / epoll
    perf/profile.py --streams 256 --vsplice-args="--threads 64"

Needs `perf` (linux-perf) and a release build (`cargo build --release --examples`). Sampling on a
VM without a PMU uses the hrtimer clock: time spent with interrupts off is charged to where they
come back on (`_raw_spin_unlock_irqrestore`), so read functions inclusively, as here.
"""
import argparse
import collections
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from run import BASELINE, EPOLL_RELAY, VSPLICE, free_port

FUNCS = ["__x64_sys_splice", "tcp_splice_read", "splice_to_socket", "tcp_sendmsg", "tcp_recvmsg",
         "handle_softirqs", "__release_sock", "tcp_rcv_established", "__schedule",
         "__do_sys_io_uring_enter", "tctx_task_work", "do_epoll_wait"]


def lo_bytes():
    for line in open("/proc/net/dev"):
        if line.strip().startswith("lo:"):
            return int(line.split(":")[1].split()[0])
    raise RuntimeError("no lo in /proc/net/dev")


def queued(port, upstream_port):
    """MB waiting in socket queues along the path, from `ss -tn`: the client's send queues, the
    relay's receive and send queues, the server's receive queues."""
    q = collections.Counter()
    lines = subprocess.run(["ss", "-tnH"], capture_output=True, text=True).stdout.splitlines()
    for line in lines:
        f = line.split()
        if len(f) < 5:
            continue
        recv_q, send_q = int(f[1]), int(f[2])
        local, peer = int(f[3].rsplit(":", 1)[1]), int(f[4].rsplit(":", 1)[1])
        if local == port:
            q["relay in"] += recv_q
        elif peer == port:
            q["client out"] += send_q
        elif peer == upstream_port:
            q["relay out"] += send_q
        elif local == upstream_port:
            q["server in"] += recv_q
    return q


def profile(name, cmd, port, upstream_port, args, out):
    relay = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):  # until it listens, or 5 s
        if relay.poll() is not None:
            sys.exit(f"{name} exited at start (port {port} in use?): {' '.join(cmd)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        sys.exit(f"{name} is not listening on port {port}")
    data = os.path.join(out, name + ".data")
    rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-a", "-o", data, "--", "sleep",
                            str(args.time + 1.5)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.7)  # perf is recording before the client's threads exist
    b0 = lo_bytes()
    client = subprocess.Popen([VSPLICE, "bench", "client",
                               f"TCP:127.0.0.1:{port}", "--streams", str(args.streams), "--time",
                               str(args.time)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    queues = collections.Counter()
    for _ in range(3):
        time.sleep(args.time / 4)
        queues.update(queued(port, upstream_port))
    client.wait()
    # Each byte crosses loopback twice (into and out of the relay). lo's count includes headers
    # and ACKs, a few per cent, the same for every relay.
    gb = (lo_bytes() - b0) / 2 / 1e9
    rec.wait()
    relay.kill()
    relay.wait()
    queues = {k: v / 3 / 1e6 for k, v in queues.items()}
    return data, gb, queues, {str(relay.pid): "relay", str(client.pid): "client"}


def charge(data, gb, roles):
    script = subprocess.run(["perf", "script", "-i", data, "-F", "pid,tid,ip,sym"],
                            capture_output=True, text=True).stdout
    per_role = collections.Counter()
    inclusive = collections.Counter()
    for block in script.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if not lines or not lines[0].strip():
            continue
        m = re.match(r"\s*(\d+)/", lines[0])
        pid = m.group(1) if m else "?"
        role = "idle" if pid == "0" else roles.get(pid, "other")
        per_role[role] += 1
        frames = {f.strip().split(" ", 1)[-1] for f in lines[1:]}
        for fn in FUNCS:
            if fn in frames:
                inclusive[(role, fn)] += 1
    return ({r: n / gb for r, n in per_role.items()},
            {k: n / gb for k, n in inclusive.items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--time", type=float, default=4)
    ap.add_argument("--vsplice-args", default="")
    ap.add_argument("--keep", action="store_true", help="keep the perf.data files")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf/profile.py needs perf (apt-get install linux-perf)")
    out = tempfile.mkdtemp(prefix="vsplice-profile-")
    upstream_port = free_port()
    server = subprocess.Popen([VSPLICE, "bench", "server",
                               f"TCP-LISTEN:{upstream_port},bind=127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    up = f"127.0.0.1:{upstream_port}"
    ports = [free_port() for _ in range(3)]
    relays = [
        ("vsplice", [VSPLICE, *args.vsplice_args.split(),
                     f"TCP-LISTEN:{ports[0]},bind=127.0.0.1,fork", "TCP:" + up], ports[0]),
        ("plain", [BASELINE, f"127.0.0.1:{ports[1]}", up], ports[1]),
        ("epoll", [EPOLL_RELAY, f"127.0.0.1:{ports[2]}", up], ports[2]),
    ]
    try:
        time.sleep(0.5)
        for name, cmd, port in relays:
            data, gb, queues, roles = profile(name, cmd, port, upstream_port, args, out)
            roles[str(server.pid)] = "server"
            per_role, inclusive = charge(data, gb, roles)
            print(f"\n{name}: {gb:.2f} GB moved in {args.time} s ({gb * 8 / args.time:.2f} Gbit/s); "
                  "samples per GB by role:")
            print("   " + ", ".join(f"{r} {v:.0f}" for r, v in
                                    sorted(per_role.items(), key=lambda kv: -kv[1])))
            print("   MB queued: " + ", ".join(f"{k} {queues.get(k, 0):.0f}" for k in
                                               ("client out", "relay in", "relay out", "server in")))
            for role in ("relay", "server", "client"):
                row = [f"{fn} {inclusive[(role, fn)]:.0f}" for fn in FUNCS
                       if inclusive.get((role, fn), 0) >= 1]
                print(f"   {role}: " + ", ".join(row))
    finally:
        server.kill()
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"\nperf data kept in {out}")


if __name__ == "__main__":
    main()
