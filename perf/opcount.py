#!/usr/bin/env python3
"""What a relay asks of the kernel, per MiB moved and per connection: `perf stat` on the
relay's process (all its threads) while one iperf3 stream or short connections run through it.

Counts system calls (all, and splice, io_uring_enter, epoll_wait, read/write families),
io_uring requests submitted and completed, and the relay's context switches; divides by the
MiB the stream moved or by the connections made. Tracepoint counting costs little, so the
relay runs at nearly its own speed (strace -c would slow it many times over and change how
its work batches).

    perf/opcount.py                          # vsplice, the plain relay, HAProxy; both loads
    perf/opcount.py --relays vsplice,haproxy --load crr --time 3
    perf/opcount.py --vsplice-variant='-b 256K'

Needs `perf` with tracepoints readable (root, or kernel.perf_event_paranoid <= -1), iperf3,
and for HAProxy the lab's unpacked Debian package (perf/run.py --haproxy fetches it).
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("run", os.path.join(HERE, "run.py"))
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)

EVENTS = [
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_splice",
    "syscalls:sys_enter_io_uring_enter",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_accept4",
    "syscalls:sys_enter_connect",
    "syscalls:sys_enter_close",
    "syscalls:sys_enter_setsockopt",
    "syscalls:sys_enter_getsockopt",
    "syscalls:sys_enter_pipe2",
    "syscalls:sys_enter_fcntl",
    "io_uring:io_uring_submit_req",
    "io_uring:io_uring_complete",
    "io_uring:io_uring_task_add",
    "context-switches",
]


def short(event):
    return event.split(":")[-1].replace("sys_enter_", "").replace("raw_syscalls", "")


def perf_stat(pid, seconds_fn):
    """Runs seconds_fn() while `perf stat` counts EVENTS on pid; returns (counts, its result)."""
    out = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS), "-p", str(pid)],
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    import time
    time.sleep(0.3)
    result = seconds_fn()
    out.send_signal(2)
    err = out.communicate(timeout=30)[1]
    counts = {}
    for line in err.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in EVENTS:
            try:
                counts[parts[2]] = int(parts[0])
            except ValueError:
                counts[parts[2]] = 0
    return counts, result


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relays", default="vsplice,baseline,haproxy")
    ap.add_argument("--vsplice-variant", action="append", default=[], metavar="ARGS")
    ap.add_argument("--load", default="stream,crr", help="stream (one iperf3 stream), crr")
    ap.add_argument("--time", type=float, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    relays = args.relays.split(",") + ["vsplice " + " ".join(v.split()) for v in args.vsplice_variant]
    rows = []
    for load in args.load.split(","):
        procs = []
        try:
            sport = run.free_port()
            if load == "stream":
                procs.append(run.Proc(["iperf3", "-s", "--forceflush", "-p", str(sport)],
                                      ready="Server listening", name="iperf3"))
            else:
                procs.append(run.Proc([run.LOADGEN, "echo", f"127.0.0.1:{sport}"],
                                      ready="echo listening", name="echo"))
            for relay in relays:
                front = run.free_port()
                p = run.start_relay(relay, ("tcp", front), ("tcp", sport))
                try:
                    if load == "stream":
                        counts, (moved, gbit) = perf_stat(
                            p.pid, lambda: run.iperf(front, args.time))
                        unit, per = "MiB", moved / 2**20
                        figure = f"{gbit:.2f} Gbit/s"
                    else:
                        counts, (_, cps) = perf_stat(
                            p.pid, lambda: run.crr(front, args.time, args.concurrency))
                        conns = run.CRR_CONNECTIONS.pop()
                        unit, per = "connection", conns
                        figure = f"{cps:.0f} conn/s"
                finally:
                    p.stop()
                rows.append((load, relay, figure, unit, {e: counts.get(e, 0) / per for e in EVENTS}))
                print(f"{load} {relay}: {figure}, " + ", ".join(
                    f"{short(e) or 'syscalls'} {counts.get(e, 0) / per:.2f}" for e in EVENTS
                    if counts.get(e)), file=sys.stderr, flush=True)
        finally:
            for p in reversed(procs):
                p.stop()
    shown = [e for e in EVENTS if any(r[4][e] for r in rows)]
    print("| load | relay | speed | per | " + " | ".join(short(e) or "all syscalls" for e in shown) + " |")
    print("|---|---|---:|---|" + "---:|" * len(shown))
    for load, relay, figure, unit, per in rows:
        print(f"| {load} | {relay} | {figure} | {unit} | " +
              " | ".join(f"{per[e]:.2f}" for e in shown) + " |")


if __name__ == "__main__":
    main()
