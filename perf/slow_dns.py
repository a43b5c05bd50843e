#!/usr/bin/env python3
"""Does a slow DNS server stall other connections? One iperf3 stream through a one-worker
vsplice relay whose upstream is a host name, while three more clients connect; every lookup
is answered by a local DNS server 1.5 s late. Prints the stream's throughput per second.

    sudo perf/slow_dns.py [VSPLICE_BINARY]

Needs root: it runs in a private mount namespace (`unshare -m`) where /etc/resolv.conf points
at the slow server on 127.0.0.53, so nothing outside the run sees it. The name looked up
(`slow.test`) resolves to 127.0.0.1.
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DELAY = 1.5


def slow_dns(sock):
    def answer(data, addr):
        time.sleep(DELAY)
        qid = struct.unpack(">H", data[:2])[0]
        i = 12
        while data[i] != 0:
            i += data[i] + 1
        question = data[12:i + 5]
        qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
        if qtype == 1:  # A: 127.0.0.1
            ans, n = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + bytes([127, 0, 0, 1]), 1
        else:  # AAAA and the rest: no answer
            ans, n = b"", 0
        sock.sendto(struct.pack(">HHHHHH", qid, 0x8180, 1, n, 0, 0) + question + ans, addr)

    while True:
        data, addr = sock.recvfrom(512)
        threading.Thread(target=answer, args=(data, addr), daemon=True).start()


def inside(vsplice):
    conf = tempfile.NamedTemporaryFile("w", suffix=".resolv.conf", delete=False)
    conf.write("nameserver 127.0.0.53\noptions timeout:5 attempts:1\n")
    conf.close()
    subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.53", 53))
    threading.Thread(target=slow_dns, args=(dns,), daemon=True).start()
    server = subprocess.Popen(["iperf3", "-s", "-p", "7801"], stdout=subprocess.DEVNULL)
    relay = subprocess.Popen([vsplice, "--threads", "1", "TCP-LISTEN:7802,bind=127.0.0.1,fork",
                              "TCP:slow.test:7801"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        stream = subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", "7802", "-t", "9", "-i", "1",
                                   "-f", "g"], stdout=subprocess.PIPE, text=True)
        time.sleep(4.5)
        others = [socket.create_connection(("127.0.0.1", 7802)) for _ in range(3)]
        out, _ = stream.communicate(timeout=60)
        print(f"iperf3 through vsplice while 3 clients connect at 4.5 s (lookups {DELAY} s each):")
        for line in out.splitlines():
            if "sec" in line and "sender" not in line and "receiver" not in line:
                fields = line.split()
                print(f"  {fields[2]:>10} s  {fields[6]:>6} Gbit/s")
        for s in others:
            s.close()
    finally:
        relay.terminate()
        server.terminate()
        os.unlink(conf.name)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--inside":
        inside(sys.argv[2])
        return
    if os.geteuid() != 0:
        sys.exit("perf/slow_dns.py needs root (a private mount namespace for resolv.conf)")
    vsplice = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "vsplice")
    if len(sys.argv) <= 1:
        subprocess.run(["cargo", "build", "--release", "--bin", "vsplice"], cwd=ROOT, check=True)
    os.execvp("unshare", ["unshare", "-m", sys.executable, os.path.abspath(__file__), "--inside",
                          vsplice])


if __name__ == "__main__":
    main()
