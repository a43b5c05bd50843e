#!/usr/bin/env python3
"""Does scraping /metrics slow a transfer? `vsplice serve` relays one service to a
`vsplice bench server`; `vsplice bench client` runs through it for --time seconds, rounds
alternating without and with a scraper fetching GET /metrics --rate times a second (each scrape
read to its end and checked for a byte counter). Prints the medians and the with/without ratio.

    perf/run.py's build first (cargo build --release), then: perf/scrape.py --rounds 5 --time 3
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VSPLICE = os.path.join(ROOT, "target", "release", "vsplice")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_log(path, needle, proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(path, errors="replace") as f:
            if needle in f.read():
                return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"no {needle!r} in {path}")


def bench(port, seconds):
    r = subprocess.run([VSPLICE, "bench", "client", f"TCP:127.0.0.1:{port}", "--time", str(seconds),
                        "--json", "--interval", "0"], capture_output=True, text=True,
                       timeout=seconds + 120)
    if r.returncode != 0:
        sys.exit(f"bench client: {r.stderr}")
    return json.loads(r.stdout)["sum_client_to_server"]["receiver_bits_per_second"] / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--time", type=float, default=3)
    ap.add_argument("--rate", type=float, default=20, help="scrapes per second")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="vsplice-scrape-")
    sport, rport, mport = free_port(), free_port(), free_port()
    procs = []
    try:
        slog = os.path.join(tmp, "server.log")
        procs.append(subprocess.Popen([VSPLICE, "bench", "server", f"TCP-LISTEN:{sport},bind=127.0.0.1", "-d"],
                                      stdout=open(slog, "w"), stderr=subprocess.STDOUT))
        wait_log(slog, "listening on", procs[-1])
        conf = os.path.join(tmp, "vsplice.toml")
        with open(conf, "w") as f:
            f.write(f'[metrics]\nlisten = "TCP-LISTEN:{mport},bind=127.0.0.1"\n[[service]]\nname = "bench"\n'
                    f'listen = "TCP-LISTEN:{rport},bind=127.0.0.1,fork"\nconnect = "TCP:127.0.0.1:{sport}"\n')
        rlog = os.path.join(tmp, "serve.log")
        procs.append(subprocess.Popen([VSPLICE, "serve", "--config", conf, "-dd"], stdout=subprocess.DEVNULL,
                                      stderr=open(rlog, "w")))
        wait_log(rlog, "serving 1 services", procs[-1])
        url = f"http://127.0.0.1:{mport}/metrics"
        runs = {"without": [], "with": []}
        scrapes = []
        for r in range(args.rounds):
            for kind in ("without", "with"):
                stop = threading.Event()
                count = [0]

                def scrape():
                    while not stop.is_set():
                        body = urllib.request.urlopen(url, timeout=5).read().decode()
                        assert "vsplice_bytes_total{" in body
                        count[0] += 1
                        stop.wait(1 / args.rate)

                t = threading.Thread(target=scrape) if kind == "with" else None
                if t:
                    t.start()
                runs[kind].append(bench(rport, args.time))
                if t:
                    stop.set()
                    t.join()
                    scrapes.append(count[0] / args.time)
                print(f"round {r + 1} {kind:7} scraping: {runs[kind][-1]:.2f} Gbit/s", file=sys.stderr)
        without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
        print(f"through vsplice serve, {args.rounds} rounds x {args.time:g} s, interleaved, medians: "
              f"{without:.2f} Gbit/s without scraping, {with_:.2f} Gbit/s with "
              f"{statistics.median(scrapes):.1f} scrapes/s; with/without = {with_ / without:.3f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
