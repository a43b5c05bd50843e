#!/usr/bin/env python3
"""Throughput through SOCKS5-SERVER against a plain vsplice TCP relay, side by side.

One stream: curl downloads a file (default 2 GiB, from /dev/shm) from a loopback HTTP server
that answers with sendfile(2), once through `vsplice TCP-LISTEN:P,fork TCP:127.0.0.1:S` (curl
--connect-to the relay's port) and once through `vsplice TCP-LISTEN:Q,fork
SOCKS5-SERVER,dest=127.0.0.1:S` (curl --socks5), in interleaved rounds; prints each round's
Gbit/s and the median ratio SOCKS5/plain. The handshake is part of each run, as a client pays
it; with GiB-sized runs it is noise. Build first: cargo build --release.

    python3 perf/socks5.py --rounds 7 --gib 2
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VSPLICE = os.path.join(ROOT, "target", "release", "vsplice")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(listener, path, size):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn, path, size), daemon=True).start()


def answer(conn, path, size):
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode())
        with open(path, "rb") as f:
            conn.sendfile(f)


def start(args):
    p = subprocess.Popen([VSPLICE, "-dd", *args], stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "listening on" in line:
            break
    threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()
    return p


def curl(extra, url):
    t0 = time.time()
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", *extra, url],
                       capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"curl {extra}: {r.stderr}")
    return int(r.stdout) * 8 / wall / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--gib", type=float, default=2)
    args = ap.parse_args()
    size = int(args.gib * 2**30)
    path = f"/dev/shm/vsplice-socks5-perf-{os.getpid()}"
    with open(path, "wb") as f:
        f.truncate(size)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    sport = listener.getsockname()[1]
    threading.Thread(target=serve, args=(listener, path, size), daemon=True).start()
    plain_port, socks_port = free_port(), free_port()
    plain = start([f"TCP-LISTEN:{plain_port},bind=127.0.0.1,fork", f"TCP:127.0.0.1:{sport}"])
    socks = start([f"TCP-LISTEN:{socks_port},bind=127.0.0.1,fork", f"SOCKS5-SERVER,dest=127.0.0.1:{sport}"])
    url = f"http://127.0.0.1:{sport}/file"
    rows = []
    try:
        for i in range(args.rounds):
            a = curl(["--connect-to", f"127.0.0.1:{sport}:127.0.0.1:{plain_port}"], url)
            b = curl(["--socks5", f"127.0.0.1:{socks_port}"], url)
            rows.append((a, b))
            print(f"round {i + 1}: plain relay {a:.2f} Gbit/s, SOCKS5-SERVER {b:.2f} Gbit/s, ratio {b / a:.3f}",
                  flush=True)
    finally:
        plain.terminate()
        socks.terminate()
        os.unlink(path)
    ratio = statistics.median(b / a for a, b in rows)
    print(f"median: plain {statistics.median(a for a, _ in rows):.2f} Gbit/s, "
          f"SOCKS5-SERVER {statistics.median(b for _, b in rows):.2f} Gbit/s, "
          f"median ratio {ratio:.3f} ({args.rounds} rounds x {args.gib:g} GiB, one stream)")


if __name__ == "__main__":
    main()
