#!/usr/bin/env python3
"""Message benchmark: messages per second through vsplice against the same messages sent
directly and through socat, in one run, rounds interleaved (direct, vsplice, socat, direct, ...),
medians and ratios in one table.

    perf/messages.py                            # both cases, 3 rounds, 2 s per run
    perf/messages.py --rounds 5 --time 3 --cases seqpacket --sizes 64,1024,65536
    perf/messages.py --json out.json            # also the raw figures

Cases:
  seqpacket  UNIX SEQPACKET to UNIX SEQPACKET: `vsplice bench client --seqpacket` against
             `vsplice bench server --seqpacket`, straight (a direct SEQPACKET pair), through
             `vsplice UNIX-LISTEN:F,socktype=5,fork UNIX-CONNECT:B,socktype=5`, and through socat
             with the same addresses (`-b` as large as the largest message, so socat does not cut
             one). The figure is the server's messages received per second; every message's
             length is checked there (the bench fails on a merged or split one).
  udp        UDP to UDP: `msgload udp` (perf/msgload.rs) sends datagrams as fast as one thread
             can to its own sink, straight, through `vsplice UDP-LISTEN:P,bind=127.0.0.1,fork
             UDP:127.0.0.1:S` and through socat with the same addresses. The figure is datagrams
             delivered per second; UDP drops what a hop cannot take, so the loss is shown too.

Needs target/release/vsplice and target/release/examples/msgload (built here when missing:
`cargo build --release --bin vsplice --example msgload`) and socat on PATH (the path is left out
without it).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
VSPLICE = os.path.join(REL, "vsplice")
MSGLOAD = os.path.join(REL, "examples", "msgload")
PATHS = ["direct", "vsplice", "socat"]


class Proc:
    """A relay or server, stopped with SIGTERM; ready once its output holds `ready`."""

    def __init__(self, argv, ready):
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while time.time() < deadline:
            self.log.seek(0)
            if ready.encode() in self.log.read():
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        self.log.seek(0)
        raise RuntimeError(f"{argv[0]} did not get ready: {self.log.read().decode(errors='replace')}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def wait_path(path):
    deadline = time.time() + 15
    while not os.path.exists(path):
        if time.time() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.02)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relay(path, first, second, largest):
    """Starts the relay of `path` between two addresses; None for direct."""
    if path == "vsplice":
        return Proc([VSPLICE, "-dd", first, second], ready="listening on")
    if path == "socat":
        return Proc(["socat", "-d", "-d", "-b", str(max(largest, 8192)), first, second],
                    ready="listening on")
    return None


def seqpacket_run(path, size, seconds, work, largest):
    back = os.path.join(work, "back.sock")
    front = os.path.join(work, f"front-{path}.sock")
    if os.path.exists(front):
        os.unlink(front)
    r = relay(path, f"UNIX-LISTEN:{front},socktype=5,fork",
              f"UNIX-CONNECT:{back},socktype=5", largest)
    try:
        target = back if r is None else front
        out = subprocess.run([VSPLICE, "bench", "client", f"UNIX-CONNECT:{target}", "--seqpacket",
                              "--time", str(seconds), "--len", str(size), "--interval", "0",
                              "--json"], capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise RuntimeError(f"seqpacket {path} {size}: {out.stderr}{out.stdout}")
        doc = json.loads(out.stdout)
        m = doc["sum_client_to_server"]["messages"]
        return {"per_second": m["receiver_messages_per_second"],
                "messages": m["receiver_messages"], "lost": 0.0}
    finally:
        if r is not None:
            r.stop()


def udp_run(path, size, seconds, work, largest):
    sink = free_udp_port()
    r = None
    to = sink
    if path != "direct":
        to = free_udp_port()
        r = relay(path, f"UDP-LISTEN:{to},bind=127.0.0.1,fork", f"UDP:127.0.0.1:{sink}", largest)
    try:
        out = subprocess.run([MSGLOAD, "udp", "--to", f"127.0.0.1:{to}", "--sink",
                              f"127.0.0.1:{sink}", "--len", str(size), "--time", str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise RuntimeError(f"udp {path} {size}: {out.stderr}")
        doc = json.loads(out.stdout)
        if doc["bad"]:
            raise RuntimeError(f"udp {path} {size}: {doc['bad']} datagrams with a lost boundary")
        lost = 1.0 - doc["received"] / doc["sent"] if doc["sent"] else 0.0
        return {"per_second": doc["received_per_second"], "messages": doc["received"],
                "lost": lost}
    finally:
        if r is not None:
            r.stop()


CASES = {"seqpacket": seqpacket_run, "udp": udp_run}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time", type=float, default=2.0)
    ap.add_argument("--cases", default="seqpacket,udp")
    ap.add_argument("--sizes", default="64,1024,8192")
    ap.add_argument("--json")
    args = ap.parse_args()
    cases = args.cases.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    for c in cases:
        if c not in CASES:
            sys.exit(f"--cases: unknown case {c!r} (seqpacket, udp)")
    if not (os.path.exists(VSPLICE) and os.path.exists(MSGLOAD)):
        subprocess.run(["cargo", "build", "--release", "--bin", "vsplice", "--example", "msgload"],
                       cwd=ROOT, check=True)
    paths = [p for p in PATHS if p != "socat" or shutil.which("socat")]
    if "socat" not in paths:
        print("socat is not installed: left out")
    work = tempfile.mkdtemp(prefix="vsplice-msgbench-")
    server = None
    if "seqpacket" in cases:
        server = Proc([VSPLICE, "bench", "server", f"UNIX-LISTEN:{work}/back.sock", "--seqpacket"],
                      ready="listening on")
    runs = {}
    try:
        for rnd in range(args.rounds):
            for case in cases:
                for size in sizes:
                    for path in paths:
                        got = CASES[case](path, size, args.time, work, max(sizes))
                        runs.setdefault((case, size, path), []).append(got)
                        print(f"round {rnd + 1} {case} {size} B {path}: "
                              f"{got['per_second']:,.0f} msg/s, lost {got['lost']:.1%}",
                              flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: {"per_second": statistics.median(r["per_second"] for r in v),
               "lost": statistics.median(r["lost"] for r in v)} for k, v in runs.items()}
    cols = "| case | message | " + " | ".join(f"{p} msg/s" for p in paths)
    cols += " | vsplice / direct" + (" | vsplice / socat" if "socat" in paths else "") + " |"
    print()
    print(f"medians of {args.rounds} interleaved rounds, {args.time} s each")
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for case in cases:
        for size in sizes:
            row = [case, f"{size} B"]
            for p in paths:
                m = med[(case, size, p)]
                cell = f"{m['per_second']:,.0f}"
                if case == "udp":
                    cell += f" ({m['lost']:.0%} lost)"
                row.append(cell)
            v = med[(case, size, "vsplice")]["per_second"]
            row.append(f"{v / med[(case, size, 'direct')]['per_second']:.2f}")
            if "socat" in paths:
                row.append(f"{v / med[(case, size, 'socat')]['per_second']:.2f}")
            print("| " + " | ".join(row) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "time": args.time,
                       "runs": [{"case": c, "size": s, "path": p, "runs": v}
                                for (c, s, p), v in runs.items()]}, f, indent=1)


if __name__ == "__main__":
    main()
