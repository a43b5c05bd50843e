#!/usr/bin/env python3
"""vsplice performance harness: vsplice vs a plain splice relay vs socat vs no relay, side by side.

Runs every case with all relays interleaved (A B C D A B C D ...), several rounds, and prints
medians in one table: throughput, the relay's CPU seconds per GiB moved (from /proc/PID/stat of
the relay and all its threads and children, before and after), and its peak RSS. Installs
iperf3 and socat from Debian when missing (as root).

    perf/run.py                      # all cases, 5 rounds
    perf/run.py --rounds 3 --time 3 --cases single,parallel8
    perf/run.py --cases idle10k      # 10,000 idle connections + one active stream
    perf/run.py --json out.json      # also write the raw figures
    perf/run.py --vsplice-args="--mode copy"    # give vsplice options (note the "=")
    perf/run.py --vsplice-old /tmp/old/target/release/vsplice   # A/B: an older build interleaved
    perf/run.py --cases scale --epoll-relay   # also a thread-per-core epoll splice relay
    perf/run.py --cases scale --cgroups       # each relay in its own CPU cgroup, as under systemd
    perf/run.py --cases single,scale,crr --haproxy   # also HAProxy (Debian's package), splicing

Cases:
  single     TCP->TCP, one iperf3 stream
  parallel8  TCP->TCP, iperf3 -P 8
  unix       UNIX->TCP, one stream (vsplice bench client over UNIX, bench server on TCP)
  many       1,000 concurrent connections each moving data (vsplice bench --streams 1000)
  crr        short connections per second through a fork listener (connect, 64 B, reply, close)
  idle10k    10,000 idle connections held through the relay, every one checked, plus one active
             stream among them; relay RSS and io_uring worker threads counted
  anchor     `vsplice bench` against iperf3 on TCP loopback, no relay: same streams (1 and 4),
             128 KiB writes, same duration, interleaved; throughput and CPU of both ends
  scale      many-stream saturation and short connections: `vsplice bench client --streams S`
             (S = 1, 4, 16, 64, 256) and `loadgen crr` with one client thread per core, through
             direct, vsplice, the plain relay and socat, interleaved; relay CPU-s/GiB and
             whole-machine CPU-s/GiB (from /proc/stat: loopback charges receive work to the
             sender, so the relay's own figure misses part of what a path costs)
  modes      vsplice's data paths side by side (--mode splice, uring-splice, copy, recv, recv-zc): one TCP
             stream's throughput and CPU, and io_uring worker threads (iou-wrk) with 1,000 idle
             connections held and while a stream runs among them
"""

import argparse
import atexit
import json
import os
import resource
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
# An older vsplice binary run side by side as relay "vsplice-old" (--vsplice-old).
VSPLICE_OLD = None
BASELINE = os.path.join(REL, "examples", "baseline-relay")
LOADGEN = os.path.join(REL, "examples", "loadgen")
EPOLL_RELAY = os.path.join(REL, "examples", "epoll-relay")
TICKS = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_tools():
    missing = [t for t in ("iperf3", "socat") if shutil.which(t) is None]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"perf/run.py needs {' '.join(missing)}: apt-get install {' '.join(missing)}")
        log(f"installing {' '.join(missing)} from Debian")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", *missing], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        if any(shutil.which(t) is None for t in missing):
            subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env,
                           stdout=subprocess.DEVNULL)
    log("building vsplice (release)")
    subprocess.run(["cargo", "build", "--release", "--bin", "vsplice", "--example", "baseline-relay",
                    "--example", "epoll-relay", "--example", "loadgen"], cwd=ROOT, check=True)


LAB_DIR = os.environ.get("VSPLICE_LAB_DIR") or os.path.join(ROOT, "target", "vsplice-lab")
# HAProxy's threads (--haproxy): one per core, as vsplice's workers.
HAPROXY_THREADS = os.cpu_count() or 1


def haproxy_command():
    """Debian's HAProxy, unpacked (never installed) into the lab's package root by the same
    code that fetches the test labs' tools (tests/common/debs.rs: `apt-get download` with
    private lists from the machine's mirror, `dpkg -x`, the libraries it lacks): the
    proxy_protocol test that needs HAProxy fetches it, so when it is not there yet, that test
    runs once. Returns (argv0, env)."""
    root = os.path.join(LAB_DIR, "debs", "root")
    binary = os.path.join(root, "usr", "sbin", "haproxy")
    if not os.access(binary, os.X_OK):
        log(f"fetching haproxy from Debian into {root} (cargo test --test proxy_protocol)")
        env = dict(os.environ, VSPLICE_LAB_DIR=LAB_DIR)
        r = subprocess.run(["cargo", "test", "--test", "proxy_protocol", "--",
                            "haproxy_reads_vsplices_v1_and_v2_headers_and_logs_the_true_client"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        if not os.access(binary, os.X_OK):
            sys.exit(f"--haproxy: no {binary} after the fetch: {r.stdout[-1500:]}{r.stderr[-1500:]}")
    libs = [os.path.join(root, d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(d for d in libs if os.path.isdir(d)))
    return binary, env


def haproxy_config(listen, upstream):
    """HAProxy as the issue measured it: mode tcp, a thread per core, splicing both ways
    (splice-auto lets it splice when its buffers would otherwise fill; splice-request and
    splice-response ask for it always)."""
    def addr(a):
        return f"127.0.0.1:{a[1]}" if a[0] == "tcp" else a[1]

    # Two descriptors a connection plus a pipe pair for a quarter of them (maxpipes'
    # default), under the hard descriptor limit HAProxy may raise itself to.
    maxconn = min(20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1] // 3)
    return f"""global
    nbthread {HAPROXY_THREADS}
    maxconn {maxconn}
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    option splice-auto
    option splice-request
    option splice-response
listen perf
    bind {addr(listen)}
    server upstream {addr(upstream)}
"""


def tcp_listening(port):
    """Whether something listens on 127.0.0.1:port, from /proc/net/tcp (no connect: a probe
    connection would reach the upstream, and iperf3's server counts it as a failed test)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            return any(line.split()[1] == want and line.split()[3] == "0A"
                       for line in list(f)[1:])
    except (OSError, IndexError):
        return False


def wait_listening(proc, listen):
    """Returns proc once it listens on `listen` (a relay that says nothing when it is ready)."""
    deadline = time.time() + 15
    while not (tcp_listening(listen[1]) if listen[0] == "tcp" else os.path.exists(listen[1])):
        if proc.p.poll() is not None or time.time() > deadline:
            proc.stop()
            proc.log.seek(0)
            raise RuntimeError(f"{proc.name} did not listen: " +
                               proc.log.read().decode(errors="replace"))
        time.sleep(0.02)
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    """utime+stime of pid, its reaped children, and its live descendants."""
    total = 0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    for child in f.read().split():
                        total += cpu_ticks(int(child))
            except OSError:
                pass
    except (OSError, IndexError):
        pass
    return total


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_peak_rss(pid):
    peak = proc_status(pid, "VmHWM")
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    peak = max(peak, tree_peak_rss(int(child)))
    except OSError:
        pass
    return peak


def iou_workers(pid):
    n = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                if f.read().startswith("iou-wrk"):
                    n += 1
    except OSError:
        pass
    return n


def machine_ticks():
    """Busy jiffies of the whole machine (all CPUs) from /proc/stat: everything but idle and
    iowait."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


class Proc:
    def __init__(self, argv, ready=None, stderr_ready=True, name=None, user=None, env=None):
        self.name = name or os.path.basename(argv[0])
        self.log = tempfile.TemporaryFile()
        kwargs = {}
        if user is not None:
            kwargs["user"] = user
        if env is not None:
            kwargs["env"] = env
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, **kwargs)
        if ready:
            deadline = time.time() + 15
            while time.time() < deadline:
                self.log.seek(0)
                if ready.encode() in self.log.read():
                    break
                if self.p.poll() is not None:
                    break
                time.sleep(0.02)
            else:
                self.stop()
                raise RuntimeError(f"{self.name} did not get ready")
            if self.p.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read().decode(errors='replace')}")

    @property
    def pid(self):
        return self.p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Cgroups:
    """--cgroups: every relay in a CPU cgroup of its own and the endpoints (this script and every
    client and server it starts) in another, all of equal weight, as systemd runs each service in
    its own cgroup. Without it, all share one group, and the kernel's scheduler shares a busy
    machine per thread: a relay with a thread per core then gets a small slice beside the
    endpoints' thread per stream, where the plain relay's thread pair per connection gets
    twice theirs (docs/performance.md: where the many-stream gap comes from)."""

    def __init__(self):
        v1 = "/sys/fs/cgroup/cpu"
        v2 = "/sys/fs/cgroup"
        self.enabled_cpu = False
        try:
            if os.path.isfile(os.path.join(v1, "cpu.shares")):
                self.root, self.weight = v1, ("cpu.shares", "1024")
            elif "cpu" in open(os.path.join(v2, "cgroup.controllers")).read().split():
                self.root, self.weight = v2, ("cpu.weight", "100")
                control = os.path.join(v2, "cgroup.subtree_control")
                if "cpu" not in open(control).read().split():
                    with open(control, "w") as f:
                        f.write("+cpu")
                    self.enabled_cpu = True
            else:
                sys.exit("--cgroups: no CPU cgroup controller (v1 /sys/fs/cgroup/cpu or v2 cpu)")
            self.made = []
            self.place("endpoints", os.getpid())
        except OSError as e:
            sys.exit(f"--cgroups: {e} (needs root and a cgroup tree this script may change)")

    def place(self, name, pid):
        path = os.path.join(self.root, f"vsplice-perf-{name}")
        if path not in self.made:
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, self.weight[0]), "w") as f:
                f.write(self.weight[1])
            self.made.append(path)
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def remove(self):
        with open(os.path.join(self.root, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        for path in self.made:
            try:
                os.rmdir(path)
            except OSError:
                pass  # a process still inside; the group goes with the next boot
        if self.enabled_cpu:
            try:
                with open(os.path.join(self.root, "cgroup.subtree_control"), "w") as f:
                    f.write("-cpu")
            except OSError:
                pass  # another group still uses it


CGROUPS = None


def start_relay(kind, listen, upstream, extra=()):
    """listen/upstream: ('tcp', port) or ('unix', path)."""
    proc = start_relay_process(kind, listen, upstream, extra)
    if CGROUPS:
        CGROUPS.place("relay-" + kind, proc.pid)
    return proc


def start_relay_process(kind, listen, upstream, extra):
    def vs_addr(a, lst):
        if a[0] == "tcp":
            return f"TCP-LISTEN:{a[1]},bind=127.0.0.1,fork" if lst else f"TCP:127.0.0.1:{a[1]}"
        return f"UNIX-LISTEN:{a[1]},fork,unlink-early" if lst else f"UNIX-CONNECT:{a[1]}"

    def plain(a):
        return f"127.0.0.1:{a[1]}" if a[0] == "tcp" else a[1]

    if kind.startswith("vsplice "):
        # --vsplice-variant: the same binary with other options, e.g. "vsplice -b 256K".
        # Leading NAME=value words are environment variables (VSPLICE_ACCEPT=...).
        words = kind.split()[1:]
        env = dict(os.environ)
        while words and "=" in words[0] and words[0].split("=", 1)[0].isupper():
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        return wait_listening(Proc([VSPLICE, *extra, *words, vs_addr(listen, True),
                                    vs_addr(upstream, False)], name=kind, env=env), listen)
    if kind in ("vsplice", "vsplice-old"):
        # Default verbosity, as a user runs it: -dd would log a line per connection (a
        # write and a log-thread wake-up each), which HAProxy without `log` does not pay.
        binary = VSPLICE if kind == "vsplice" else VSPLICE_OLD
        return wait_listening(Proc([binary, *extra, vs_addr(listen, True), vs_addr(upstream, False)],
                                   name=kind), listen)
    if kind == "vsplice-serve":
        # The same relay declared in a config file: one [[service]], run by `vsplice serve`
        # (with a metrics endpoint, as a deployment would have; nobody scrapes it here).
        fd, path = tempfile.mkstemp(prefix="vsplice-perf-", suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write(f'[metrics]\nlisten = "TCP-LISTEN:{free_port()},bind=127.0.0.1"\n'
                    f'[[service]]\nname = "perf"\nlisten = "{vs_addr(listen, True)}"\n'
                    f'connect = "{vs_addr(upstream, False)}"\n')
        return Proc([VSPLICE, "serve", "--config", path, "-dd", *extra], ready="serving 1 services",
                    name=kind)
    if kind == "haproxy":
        binary, env = haproxy_command()
        fd, path = tempfile.mkstemp(prefix="vsplice-perf-haproxy-", suffix=".cfg")
        with os.fdopen(fd, "w") as f:
            f.write(haproxy_config(listen, upstream))
        if listen[0] == "unix" and os.path.exists(listen[1]):
            os.unlink(listen[1])
        # -db: in the foreground, one process (its threads), which /proc/PID/stat covers.
        return wait_listening(Proc([binary, "-db", "-f", path], name="haproxy", env=env), listen)
    if kind == "baseline":
        return Proc([BASELINE, plain(listen), plain(upstream)], ready="listening on", name="baseline")
    if kind == "epoll":
        return Proc([EPOLL_RELAY, plain(listen), plain(upstream)], ready="listening on",
                    name="epoll")
    if kind == "socat":
        # socat's default backlog is 5: a burst of 1,000 connects overflows it and clients sit
        # in TCP's SYN backoff for minutes. Give it vsplice's 1024 so the cases measure data
        # movement, not accept-queue overflow.
        lst = vs_addr(listen, True) + ",backlog=1024"
        if listen[0] == "tcp":
            lst = lst + ",reuseaddr"
        return Proc(["socat", "-d", "-d", lst, vs_addr(upstream, False)], ready="listening on",
                    name="socat")
    raise ValueError(kind)


def measure(relay, fn):
    """Runs fn() -> (bytes_moved or None, figure); returns dict with relay CPU deltas."""
    before = cpu_ticks(relay.pid) if relay else 0
    machine_before = machine_ticks()
    t0 = time.time()
    moved, figure = fn()
    wall = time.time() - t0
    used = (cpu_ticks(relay.pid) - before) / TICKS if relay else None
    machine_used = (machine_ticks() - machine_before) / TICKS
    out = {"figure": figure, "wall": wall, "machine_cpu_s": machine_used}
    if moved:
        out["machine_cpu_s_per_gib"] = machine_used / (moved / 2**30)
    if relay:
        out["cpu_s"] = used
        out["cpu_pct"] = 100 * used / wall
        if moved:
            out["cpu_s_per_gib"] = used / (moved / 2**30)
    return out


def iperf(port, seconds, parallel=1):
    for _ in range(20):
        r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J",
                            "-P", str(parallel)], capture_output=True, text=True,
                           timeout=seconds + 60)
        d = json.loads(r.stdout)
        # The server may still be closing the previous test (a relay that lingers on close).
        if "busy" not in d.get("error", ""):
            break
        time.sleep(0.5)
    if "error" in d:
        raise RuntimeError(d["error"])
    s = d["end"]["sum_received"]
    return s["bytes"], s["bits_per_second"] / 1e9


def bench_client(address, seconds, streams=1):
    r = subprocess.run([VSPLICE, "bench", "client", address, "--time", str(seconds), "--json",
                        "--streams", str(streams), "--interval", "0"],
                       capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode != 0:
        raise RuntimeError(f"bench client {address}: {r.stderr.strip()} {r.stdout[-300:]}")
    d = json.loads(r.stdout)
    s = d["sum_client_to_server"]
    moving = sum(1 for st in d["streams"] if st["client_to_server"]["receiver_bytes"] > 0)
    STREAMS_WITH_DATA.append(moving)
    return s["receiver_bytes"], s["receiver_bits_per_second"] / 1e9


# Streams of the last bench_client runs that moved at least one byte (the "many" case).
STREAMS_WITH_DATA = []


def crr(port, seconds, concurrency=8):
    r = subprocess.run([LOADGEN, "crr", f"127.0.0.1:{port}", "--time", str(seconds),
                        "--concurrency", str(concurrency)], capture_output=True, text=True,
                       timeout=seconds + 60)
    d = json.loads(r.stdout)
    CRR_CONNECTIONS.append(d["connections"])
    return None, d["per_second"]


# Connections made by the last crr runs (relay CPU per 1,000 connections).
CRR_CONNECTIONS = []


RELAYS = ["vsplice", "baseline", "socat", "direct"]


def relays_with_processes():
    """The relays that run as a process of their own (all but "direct")."""
    return [k for k in RELAYS if k != "direct"]


def run_case(case, args, vsplice_extra):
    rounds, seconds = args.rounds, args.time
    results = {k: [] for k in RELAYS}
    tmp = tempfile.mkdtemp(prefix="vsplice-perf-")
    procs = []
    try:
        if case in ("single", "parallel8"):
            sport = free_port()
            procs.append(Proc(["iperf3", "-s", "--forceflush", "-p", str(sport)], ready="Server listening",
                              name="iperf3"))
            upstream = ("tcp", sport)
            fronts = {}
            for k in relays_with_processes():
                fronts[k] = ("tcp", free_port())
            par = 8 if case == "parallel8" else 1
            load = lambda port: (lambda: iperf(port, seconds, par))
            unit = "Gbit/s"
            direct_port = sport
        elif case.startswith("scale-") and case != "scale-crr":
            sport = free_port()
            procs.append(Proc([VSPLICE, "bench", "server", f"TCP-LISTEN:{sport},bind=127.0.0.1"],
                              ready="listening on", name="bench-server"))
            upstream = ("tcp", sport)
            fronts = {k: ("tcp", free_port()) for k in relays_with_processes()}
            streams = int(case.split("-", 1)[1])
            load = lambda front: (lambda: bench_client(f"TCP:127.0.0.1:{front[1]}", seconds, streams))
            unit = "Gbit/s"
            direct_port = None
        elif case == "scale-crr":
            sport = free_port()
            procs.append(Proc([LOADGEN, "echo", f"127.0.0.1:{sport}"], ready="echo listening",
                              name="echo"))
            upstream = ("tcp", sport)
            fronts = {k: ("tcp", free_port()) for k in relays_with_processes()}
            threads = os.cpu_count() or 1
            load = lambda port: (lambda: crr(port, seconds, threads))
            unit = "conn/s"
            direct_port = sport
        elif case in ("unix", "many"):
            sport = free_port()
            procs.append(Proc([VSPLICE, "bench", "server", f"TCP-LISTEN:{sport},bind=127.0.0.1"],
                              ready="listening on", name="bench-server"))
            upstream = ("tcp", sport)
            fronts = {}
            for k in relays_with_processes():
                fronts[k] = ("unix", os.path.join(tmp, f"{k}.sock")) if case == "unix" else ("tcp", free_port())
            streams = 1000 if case == "many" else 1

            def load(front):
                addr = (f"UNIX-CONNECT:{front[1]}" if front[0] == "unix" else f"TCP:127.0.0.1:{front[1]}")
                return lambda: bench_client(addr, seconds, streams)
            unit = "Gbit/s"
            direct_port = None
        elif case == "crr":
            sport = free_port()
            procs.append(Proc([LOADGEN, "echo", f"127.0.0.1:{sport}"], ready="echo listening",
                              name="echo"))
            upstream = ("tcp", sport)
            fronts = {k: ("tcp", free_port()) for k in relays_with_processes()}
            load = lambda port: (lambda: crr(port, seconds))
            unit = "conn/s"
            direct_port = sport
        else:
            raise ValueError(case)

        relays = {}
        for k in relays_with_processes():
            relays[k] = start_relay(k, fronts[k], upstream,
                                    vsplice_extra if k.startswith("vsplice") else ())
            procs.append(relays[k])
        for r in range(rounds):
            for k in RELAYS:
                by_front = case in ("unix", "many") or (case.startswith("scale-") and case != "scale-crr")
                if k == "direct":
                    if by_front:
                        fn = load(("tcp", sport))
                    else:
                        fn = load(direct_port)
                    results[k].append(measure(None, fn))
                else:
                    front = fronts[k]
                    fn = load(front) if by_front else load(front[1])
                    results[k].append(measure(relays[k], fn))
                if STREAMS_WITH_DATA:
                    results[k][-1]["streams_with_data"] = STREAMS_WITH_DATA.pop()
                if CRR_CONNECTIONS:
                    conns = CRR_CONNECTIONS.pop()
                    if conns and "cpu_s" in results[k][-1]:
                        results[k][-1]["cpu_ms_per_kconn"] = results[k][-1]["cpu_s"] * 1e6 / conns
            log(f"  {case} round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {results[k][-1]['figure']:.2f}" for k in RELAYS))
        peaks = {k: tree_peak_rss(relays[k].pid) for k in relays_with_processes()}
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for k in RELAYS:
        rows = results[k]
        s = {"figure": statistics.median(r["figure"] for r in rows), "unit": unit,
             "rounds": [r["figure"] for r in rows],
             "cost_rounds": [r.get("cpu_s_per_gib", r.get("cpu_ms_per_kconn")) for r in rows]}
        moving = [r["streams_with_data"] for r in rows if "streams_with_data" in r]
        if moving:
            s["streams_with_data"] = min(moving)
        if k != "direct":
            cps = [r["cpu_s_per_gib"] for r in rows if "cpu_s_per_gib" in r]
            if cps:
                s["cpu_s_per_gib"] = statistics.median(cps)
            per_conn = [r["cpu_ms_per_kconn"] for r in rows if "cpu_ms_per_kconn" in r]
            if per_conn:
                s["cpu_ms_per_kconn"] = statistics.median(per_conn)
            s["cpu_pct"] = statistics.median(r["cpu_pct"] for r in rows)
        mcps = [r["machine_cpu_s_per_gib"] for r in rows if "machine_cpu_s_per_gib" in r]
        if mcps:
            s["machine_cpu_s_per_gib"] = statistics.median(mcps)
        if k in peaks:
            s["peak_rss"] = peaks[k]
        summary[k] = s
    return summary


def loadgen_stream(port, seconds):
    r = subprocess.run([LOADGEN, "stream", f"127.0.0.1:{port}", "--time", str(seconds)],
                       capture_output=True, text=True, timeout=seconds + 60)
    d = json.loads(r.stdout)
    return d["bytes"] * 2, d["gbit"]


def run_idle(args, vsplice_extra, count, user=None, binary=None):
    """count idle connections held through one vsplice listener (each checked to be served),
    and one active stream through the same listener, before and among them."""
    sport = free_port()
    echo = Proc([LOADGEN, "echo", f"127.0.0.1:{sport}"], ready="echo listening", name="echo")
    fport = free_port()
    relay = Proc([binary or VSPLICE, "-dd", *vsplice_extra, f"TCP-LISTEN:{fport},bind=127.0.0.1,fork",
                  f"TCP:127.0.0.1:{sport}"], ready="listening on", name="vsplice", user=user)
    out = {"connections": count, "user": user or "root",
           "binary": "vsplice-old" if binary else "vsplice"}
    try:
        alone = [measure(relay, lambda: loadgen_stream(fport, args.time)) for _ in range(3)]
        holder = subprocess.Popen([LOADGEN, "hold", f"127.0.0.1:{fport}", "--count", str(count)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        out["hold"] = holder.stdout.readline().strip()
        time.sleep(1)
        out["relay_rss_idle_mib"] = round(proc_status(relay.pid, "VmRSS") / 2**20, 1)
        out["iou_wrk_threads_idle"] = iou_workers(relay.pid)
        out["relay_threads"] = len(os.listdir(f"/proc/{relay.pid}/task"))
        out["relay_fds"] = len(os.listdir(f"/proc/{relay.pid}/fd"))
        among = [measure(relay, lambda: loadgen_stream(fport, args.time)) for _ in range(3)]
        out["iou_wrk_threads_active"] = iou_workers(relay.pid)
        holder.stdin.write("\n")
        holder.stdin.flush()
        out["after"] = holder.stdout.readline().strip()
        holder.wait(120)
        out["relay_peak_rss_mib"] = round(proc_status(relay.pid, "VmHWM") / 2**20, 1)
        out["stream_alone_gbit"] = round(statistics.median(m["figure"] for m in alone), 2)
        out["stream_among_idle_gbit"] = round(statistics.median(m["figure"] for m in among), 2)
        out["ratio"] = round(out["stream_among_idle_gbit"] / out["stream_alone_gbit"], 3)
    finally:
        relay.stop()
        echo.stop()
    return out


def run_anchor(args):
    """vsplice bench vs iperf3, both straight to their own server."""
    iport, bport = free_port(), free_port()
    iperf_server = Proc(["iperf3", "-s", "--forceflush", "-p", str(iport)], ready="Server listening",
                        name="iperf3")
    bench_server = Proc([VSPLICE, "bench", "server", f"TCP-LISTEN:{bport},bind=127.0.0.1"],
                        ready="listening on", name="bench-server")
    out = {}
    try:
        for streams in (1, 4):
            rows = {"iperf3": [], "vsplice bench": []}
            for _ in range(args.rounds):
                r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(iport), "-t", str(args.time),
                                    "-P", str(streams), "-l", "128K", "-J"],
                                   capture_output=True, text=True, timeout=args.time + 60)
                d = json.loads(r.stdout)
                cpu = d["end"]["cpu_utilization_percent"]
                rows["iperf3"].append((d["end"]["sum_received"]["bits_per_second"] / 1e9,
                                       cpu["host_total"], cpu["remote_total"]))
                r = subprocess.run([VSPLICE, "bench", "client", f"TCP:127.0.0.1:{bport}", "--time",
                                    str(args.time), "--streams", str(streams), "--len", "128K",
                                    "--json", "--interval", "0"],
                                   capture_output=True, text=True, timeout=args.time + 60)
                d = json.loads(r.stdout)
                rows["vsplice bench"].append((d["sum_client_to_server"]["receiver_bits_per_second"] / 1e9,
                                              d["cpu"]["client"]["total_pct"],
                                              d["cpu"]["server"]["total_pct"]))
            out[streams] = {k: tuple(round(statistics.median(x[i] for x in v), 2) for i in range(3))
                            for k, v in rows.items()}
            log(f"  anchor {streams} stream(s): {out[streams]}")
    finally:
        iperf_server.stop()
        bench_server.stop()
    return out


MODES = ["splice", "uring-splice", "copy", "recv", "recv-zc"]


def run_modes(args, extra):
    """The three data paths, interleaved, through relays to one echo backend."""
    sport = free_port()
    echo = Proc([LOADGEN, "echo", f"127.0.0.1:{sport}"], ready="echo listening", name="echo")
    relays, ports = {}, {}
    out = {}
    try:
        for m in MODES:
            ports[m] = free_port()
            relays[m] = Proc([VSPLICE, "-dd", *extra, "--mode", m,
                              f"TCP-LISTEN:{ports[m]},bind=127.0.0.1,fork", f"TCP:127.0.0.1:{sport}"],
                             ready="listening on", name=f"vsplice-{m}")
        runs = {m: [] for m in MODES}
        for r in range(args.rounds):
            for m in MODES:
                runs[m].append(measure(relays[m], lambda: loadgen_stream(ports[m], args.time)))
            log("  modes round %d/%d: " % (r + 1, args.rounds) + ", ".join(
                f"{m} {runs[m][-1]['figure']:.2f}" for m in MODES))
        for m in MODES:
            holder = subprocess.Popen([LOADGEN, "hold", f"127.0.0.1:{ports[m]}", "--count", "1000"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            held = holder.stdout.readline().strip()
            time.sleep(1)
            idle_workers = iou_workers(relays[m].pid)
            among = measure(relays[m], lambda: loadgen_stream(ports[m], args.time))
            busy_workers = iou_workers(relays[m].pid)
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.stdout.readline()
            holder.wait(60)
            out[m] = {
                "gbit": round(statistics.median(x["figure"] for x in runs[m]), 2),
                "cpu_s_per_gib": round(statistics.median(x["cpu_s_per_gib"] for x in runs[m]), 3),
                "held": held,
                "iou_wrk_with_1000_idle": idle_workers,
                "iou_wrk_with_1000_idle_and_a_stream": busy_workers,
                "gbit_among_1000_idle": round(among["figure"], 2),
            }
    finally:
        for p in relays.values():
            p.stop()
        echo.stop()
    return out


def table(all_results):
    lines = ["| case | relay | throughput | relay CPU-s/GiB | machine CPU-s/GiB | relay CPU | peak RSS | vs baseline | vs direct | vs socat |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, res in all_results.items():
        base = res["baseline"]["figure"]
        soc = res["socat"]["figure"]
        direct = res["direct"]["figure"]
        for k in RELAYS:
            r = res[k]
            cps = f"{r['cpu_s_per_gib']:.3f}" if "cpu_s_per_gib" in r else "-"
            cpu = f"{r['cpu_pct']:.0f}%" if "cpu_pct" in r else "-"
            rss = f"{r['peak_rss'] / 2**20:.1f} MiB" if r.get("peak_rss") else "-"
            vb = f"{r['figure'] / base:.2f}x" if base else "-"
            vsoc = f"{r['figure'] / soc:.2f}x" if soc else "-"
            vd = f"{r['figure'] / direct:.2f}x" if direct else "-"
            mcps = f"{r['machine_cpu_s_per_gib']:.3f}" if "machine_cpu_s_per_gib" in r else "-"
            note = f" ({r['streams_with_data']} streams moved data)" if "streams_with_data" in r else ""
            lines.append(f"| {case} | {k} | {r['figure']:.2f} {r['unit']}{note} | {cps} | {mcps} | {cpu} | {rss} | {vb} | {vd} | {vsoc} |")
    return "\n".join(lines)


def paired(res, a, b, key):
    """Median over rounds of a's figure (key "rounds") or cost ("cost_rounds") over b's in the
    same round: on a loaded machine a round's disturbance hits neighbours alike."""
    xs = [x / y for x, y in zip(res[a][key], res[b][key]) if x and y]
    return statistics.median(xs) if xs else None


def haproxy_table(all_results):
    """vsplice against HAProxy and the plain relay: medians, ratios of medians and paired
    (per-round) ratios; cost is relay CPU-s per GiB, or relay CPU-ms per 1,000 connections."""
    lines = ["| case | vsplice | HAProxy | plain relay | vsplice / HAProxy (paired) | vsplice / plain (paired) "
             "| cost vsplice | cost HAProxy | cost plain | cost vsplice / HAProxy (paired) | cost vsplice / plain (paired) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cost(r):
        if "cpu_s_per_gib" in r:
            return r["cpu_s_per_gib"], "CPU-s/GiB"
        if "cpu_ms_per_kconn" in r:
            return r["cpu_ms_per_kconn"], "CPU-ms/1k conn"
        return None, ""

    def ratio(x, y, p):
        if not x or not y:
            return "-"
        return f"{x / y:.2f} ({p:.2f})" if p else f"{x / y:.2f}"

    for case, res in all_results.items():
        v, h, b = res["vsplice"], res["haproxy"], res["baseline"]
        cv, unit = cost(v)
        ch, cb = cost(h)[0], cost(b)[0]
        fmt = (lambda c: f"{c:.3f}" if c is not None else "-") if unit == "CPU-s/GiB" else \
            (lambda c: f"{c:.1f}" if c is not None else "-")
        lines.append(
            f"| {case} | {v['figure']:.2f} {v['unit']} | {h['figure']:.2f} | {b['figure']:.2f} "
            f"| {ratio(v['figure'], h['figure'], paired(res, 'vsplice', 'haproxy', 'rounds'))} "
            f"| {ratio(v['figure'], b['figure'], paired(res, 'vsplice', 'baseline', 'rounds'))} "
            f"| {fmt(cv)} {unit} | {fmt(ch)} | {fmt(cb)} "
            f"| {ratio(cv, ch, paired(res, 'vsplice', 'haproxy', 'cost_rounds'))} "
            f"| {ratio(cv, cb, paired(res, 'vsplice', 'baseline', 'cost_rounds'))} |")
    return "\n".join(lines)


def ab_table(all_results):
    """vsplice against vsplice-old: medians and new/old ratios."""
    lines = ["| case | vsplice | vsplice-old | new/old | CPU new (s/GiB, ms/1k conn) | CPU old | new/old |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for case, res in all_results.items():
        new, old = res["vsplice"], res["vsplice-old"]
        ratio = f"{new['figure'] / old['figure']:.3f}" if old["figure"] else "-"
        p_fig = paired(res, "vsplice", "vsplice-old", "rounds")
        p_cost = paired(res, "vsplice", "vsplice-old", "cost_rounds")
        if p_fig:
            ratio += f" (paired {p_fig:.3f})"
        if "cpu_s_per_gib" in new and "cpu_s_per_gib" in old:
            cps = (f"{new['cpu_s_per_gib']:.3f} | {old['cpu_s_per_gib']:.3f} | "
                   f"{new['cpu_s_per_gib'] / old['cpu_s_per_gib']:.3f}")
        elif "cpu_ms_per_kconn" in new and "cpu_ms_per_kconn" in old:
            cps = (f"{new['cpu_ms_per_kconn']:.1f} ms/1k conn | {old['cpu_ms_per_kconn']:.1f} | "
                   f"{new['cpu_ms_per_kconn'] / old['cpu_ms_per_kconn']:.3f}")
        else:
            cps = "- | - | -"
        if p_cost and cps != "- | - | -":
            cps += f" (paired {p_cost:.3f})"
        lines.append(f"| {case} | {new['figure']:.2f} {new['unit']} | {old['figure']:.2f} {old['unit']} | "
                     f"{ratio} | {cps} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--time", type=float, default=5)
    ap.add_argument("--cases", default="single,parallel8,unix,many,crr,idle10k,modes,anchor")
    ap.add_argument("--vsplice-args", default="", help="extra vsplice options, e.g. '--mode copy'")
    ap.add_argument("--json", help="also write all figures to this file")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--vsplice-serve", action="store_true",
                    help="also run the vsplice relay declared in a config file (`vsplice serve "
                         "--config`), as relay 'vsplice-serve' interleaved with the others; the "
                         "table then gives serve/CLI ratios")
    ap.add_argument("--vsplice-old", metavar="PATH",
                    help="an older vsplice binary, run as relay 'vsplice-old' interleaved with the "
                         "others (same --vsplice-args); idle10k runs once per binary")
    ap.add_argument("--epoll-relay", action="store_true",
                    help="also run perf/epoll_relay.rs (the plain relay's splice, but a thread "
                         "per core on edge-triggered epoll) as relay 'epoll': tells the cost of "
                         "io_uring and vsplice's machinery from that of the thread-per-core model")
    ap.add_argument("--vsplice-variant", action="append", default=[], metavar="ARGS",
                    help="also run this binary with these extra options as relay 'vsplice ARGS' "
                         "interleaved with the others (repeatable), e.g. --vsplice-variant='-b 256K'; leading "
                         "NAME=value words set environment variables")
    ap.add_argument("--haproxy", action="store_true",
                    help="also run HAProxy (Debian's package, fetched into the lab folder "
                         "$VSPLICE_LAB_DIR like the test labs' tools) as relay 'haproxy': mode "
                         "tcp, a thread per core, splice-auto, splice-request, splice-response; "
                         "the output gains a vsplice/HAProxy table")
    ap.add_argument("--cgroups", action="store_true",
                    help="each relay in a CPU cgroup of its own, the endpoints in another (as "
                         "systemd runs services); needs root")
    args = ap.parse_args()
    if args.cgroups:
        global CGROUPS
        CGROUPS = Cgroups()
        atexit.register(CGROUPS.remove)
        # atexit runs on SIGTERM only through a normal exit.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.epoll_relay:
        RELAYS.insert(RELAYS.index("baseline") + 1, "epoll")
    for variant in reversed(args.vsplice_variant):
        RELAYS.insert(1, "vsplice " + " ".join(variant.split()))
    if args.haproxy:
        RELAYS.insert(RELAYS.index("baseline"), "haproxy")
        log("haproxy: " + haproxy_command()[0])
    if args.vsplice_old:
        global VSPLICE_OLD
        VSPLICE_OLD = os.path.abspath(args.vsplice_old)
        if not os.access(VSPLICE_OLD, os.X_OK):
            sys.exit(f"--vsplice-old: {VSPLICE_OLD} is not an executable")
        RELAYS.insert(1, "vsplice-old")
    if args.vsplice_serve:
        RELAYS.insert(1, "vsplice-serve")
    if not args.no_build:
        ensure_tools()
    extra = args.vsplice_args.split()
    cpus = os.cpu_count()
    uname = os.uname()
    log(f"machine: {cpus} CPUs, {uname.sysname} {uname.release}; {args.rounds} rounds x {args.time} s")
    results = {}
    idle = None
    modes = None
    anchor = None
    cases = []
    for case in args.cases.split(","):
        if case == "scale":
            cases += ["scale-1", "scale-4", "scale-16", "scale-64", "scale-256", "scale-crr"]
        else:
            cases.append(case)
    for case in cases:
        if case == "anchor":
            anchor = run_anchor(args)
            continue
        if case == "modes":
            modes = run_modes(args, extra)
            continue
        if case == "idle10k":
            log("  idle10k: 10,000 idle connections as root, 9,000 as nobody")
            binaries = [None, VSPLICE_OLD] if VSPLICE_OLD else [None]
            idle = [run_idle(args, extra, 10000, binary=b) for b in binaries]
            if os.geteuid() == 0:
                idle += [run_idle(args, extra, 9000, user="nobody", binary=b) for b in binaries]
            continue
        results[case] = run_case(case, args, extra)
    print(f"\nvsplice perf, {time.strftime('%Y-%m-%d')}, {cpus} CPUs, kernel {uname.release}, "
          f"{args.rounds} rounds x {args.time:g} s, medians; vsplice {' '.join(extra) or '(defaults)'}\n")
    if results:
        print(table(results))
        if VSPLICE_OLD:
            print(f"\nA/B: vsplice ({VSPLICE}) against vsplice-old ({VSPLICE_OLD})\n")
            print(ab_table(results))
        if args.haproxy:
            print(f"\nvsplice against HAProxy (nbthread {HAPROXY_THREADS}, splice-auto, "
                  "splice-request, splice-response) and the plain relay; paired = median of "
                  "the per-round ratios\n")
            print(haproxy_table(results))
        if args.vsplice_serve:
            print("\nvsplice serve (config file) against the command-line relay\n")
            print("| case | serve | CLI | serve/CLI | CPU-s/GiB serve | CPU-s/GiB CLI | serve/CLI |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for case, res in results.items():
                new, old = res["vsplice-serve"], res["vsplice"]
                ratio = f"{new['figure'] / old['figure']:.3f}" if old["figure"] else "-"
                cps = "- | - | -"
                if new.get("cpu_s_per_gib") and old.get("cpu_s_per_gib"):
                    cps = (f"{new['cpu_s_per_gib']:.3f} | {old['cpu_s_per_gib']:.3f} | "
                           f"{new['cpu_s_per_gib'] / old['cpu_s_per_gib']:.3f}")
                print(f"| {case} | {new['figure']:.2f} {new['unit']} | {old['figure']:.2f} {old['unit']} | "
                      f"{ratio} | {cps} |")
    if anchor:
        print("\n| streams | tool | Gbit/s | client CPU | server CPU | client+server CPU |")
        print("|---:|---|---:|---:|---:|---:|")
        for streams, rows in anchor.items():
            for tool, (gbit, c, srv) in rows.items():
                print(f"| {streams} | {tool} | {gbit} | {c:.1f}% | {srv:.1f}% | {c + srv:.1f}% |")
            ratio = rows["vsplice bench"][0] / rows["iperf3"][0]
            print(f"| {streams} | ratio | {ratio:.3f} | | | |")
    if modes:
        print("\n| data path | Gbit/s (echoed stream) | CPU-s/GiB | iou-wrk, 1,000 idle | iou-wrk, 1,000 idle + stream | Gbit/s among 1,000 idle |")
        print("|---|---:|---:|---:|---:|---:|")
        for m, r in modes.items():
            print(f"| {m} | {r['gbit']} | {r['cpu_s_per_gib']} | {r['iou_wrk_with_1000_idle']} | "
                  f"{r['iou_wrk_with_1000_idle_and_a_stream']} | {r['gbit_among_1000_idle']} |")
    for run in idle or []:
        print(f"\nidle ({run['user']}, {run['binary']}): " + json.dumps(run))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": results, "idle10k": idle, "modes": modes, "anchor": anchor, "cpus": cpus, "kernel": uname.release,
                       "rounds": args.rounds, "seconds": args.time, "vsplice_args": extra}, f, indent=2)


if __name__ == "__main__":
    main()
