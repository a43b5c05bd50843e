#!/usr/bin/env python3
"""Host-side profile of the user-mode-linux guest kernel, per relay (perf/uml-profile.sh).

  uml-profile.py poll PERF_DATA OUT       every 50 ms: CLOCK_REALTIME, and the user and system
                                          CPU ticks of the UML processes (the process group of
                                          the `perf record` that writes PERF_DATA, perf itself
                                          left out), until that group is gone
  uml-profile.py report CONSOLE SCRIPT POLL [TOP]
                                          CONSOLE: the scenario's output (KSYM and PROFILE-RUN
                                          lines); SCRIPT: `perf script -F time,pid,ip`; POLL:
                                          the poll file. Prints, per relay: wall time, guest
                                          busy/idle (its /proc/stat), host CPU of the UML
                                          processes (user = guest kernel and guest programs,
                                          system = the host kernel working for UML), and the
                                          guest kernel functions with the most samples, in
                                          milliseconds per GiB moved.
"""

import bisect
import collections
import os
import re
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def task_switches(pid):
    """Voluntary + involuntary context switches of every thread of `pid`."""
    n = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            for line in open(f"/proc/{pid}/task/{tid}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
        except OSError:
            pass
    return n


def poll(perf_data, out):
    """Runs until killed; follows the UML processes under every `perf record -o PERF_DATA`
    (the lab's probe boot has one of its own before the scenario's). Writes CLOCK_REALTIME and
    the sums over every UML process seen so far (a process that ended keeps its last figures)
    of user and system ticks, minor page faults and context switches."""
    last = {}
    with open(out, "w") as f:
        while True:
            leaders = set()
            stats = {}
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    stat = open(f"/proc/{pid}/stat").read()
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                except OSError:
                    continue
                if perf_data.encode() in cmd and not cmd[0].endswith(b"python3"):
                    leaders.add(int(pid))
                else:
                    stats[int(pid)] = stat[stat.rindex(")") + 2 :].split()
            # UML's kernel process (a child of perf) starts a session of its own: its group
            # holds the kernel and every guest process (`uml-userspace`).
            groups = {int(v[2]) for v in stats.values() if int(v[1]) in leaders}
            now = time.clock_gettime_ns(time.CLOCK_REALTIME)
            for pid, v in stats.items():
                if int(v[2]) in groups:
                    # utime, stime, minflt, context switches; keyed by pid and start time.
                    last[(pid, v[19])] = (int(v[11]), int(v[12]), int(v[7]), task_switches(pid))
                    kind = "kernel" if pid == int(v[2]) else "user"
                    f.write(f"P {now} {pid} {v[19]} {kind} {' '.join(map(str, last[(pid, v[19])]))}\n")
            if leaders:
                sums = [sum(x[i] for x in last.values()) for i in range(4)]
                f.write(f"{time.clock_gettime_ns(time.CLOCK_REALTIME)} {' '.join(map(str, sums))}\n")
                f.flush()
            time.sleep(0.05)


def at(polls, t):
    """The polled sums at realtime t, linearly between the two nearest polls."""
    times = [p[0] for p in polls]
    i = bisect.bisect_left(times, t)
    if i == 0:
        return polls[0][1:]
    if i >= len(polls):
        return polls[-1][1:]
    a, b = polls[i - 1], polls[i]
    w = (t - a[0]) / (b[0] - a[0]) if b[0] > a[0] else 0
    return tuple(x + w * (y - x) for x, y in zip(a[1:], b[1:]))


def report(console, script, pollfile, top=25):
    syms = []
    runs = []
    for line in open(console, errors="replace"):
        if line.startswith("KSYM "):
            _, addr, name = line.split()
            syms.append((int(addr, 16), name))
        elif line.startswith("PROFILE-RUN "):
            kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
            runs.append(
                {
                    "via": kv["via"].strip('"'),
                    "t0": int(kv["t0"]),
                    "t1": int(kv["t1"]),
                    "bytes": int(kv["bytes"]),
                    "gbit": float(kv["gbit"]),
                    "ticks": [int(x) for x in kv["guest_ticks"].split(",")],
                    "ctxt": int(kv.get("guest_ctxt", 0)),
                    "intr": int(kv.get("guest_intr", 0)),
                    "pgfault": int(kv.get("guest_pgfault", 0)),
                }
            )
    syms.sort()
    addrs = [a for a, _ in syms]
    lo, hi = addrs[0], addrs[-1] + 0x10000
    starts = sorted(r["t0"] for r in runs)
    by_start = {r["t0"]: r for r in runs}
    samples = collections.defaultdict(collections.Counter)
    total = collections.Counter()
    period_ns = None
    last_t = {}
    for line in open(script, errors="replace"):
        f = line.split()
        if len(f) < 3:
            continue
        try:
            pid = int(f[0])
            t = int(round(float(f[1].rstrip(":")) * 1e9))
            ip = int(f[2], 16)
        except ValueError:
            continue
        i = bisect.bisect_right(starts, t) - 1
        if i < 0:
            continue
        run = by_start[starts[i]]
        if t > run["t1"]:
            continue
        via = run["via"]
        if lo <= ip < hi:
            j = bisect.bisect_right(addrs, ip) - 1
            name = syms[j][1]
        else:
            name = "[guest user space]"
        samples[via][name] += 1
        total[via] += 1
    polls = [tuple(int(x) for x in l.split()) for l in open(pollfile) if l.strip() and l[0].isdigit()]
    vias = list(dict.fromkeys(r["via"] for r in runs))
    per = {}
    for via in vias:
        rs = [r for r in runs if r["via"] == via]
        gib = sum(r["bytes"] for r in rs) / 2**30
        wall = sum(r["t1"] - r["t0"] for r in rs) / 1e9
        busy = sum(sum(r["ticks"][:3]) + sum(r["ticks"][4:7]) for r in rs)
        idle = sum(r["ticks"][3] for r in rs)
        hu = hs = hf = hc = 0.0
        for r in rs:
            a, b = at(polls, r["t0"]), at(polls, r["t1"])
            hu += (b[0] - a[0]) / HZ
            hs += (b[1] - a[1]) / HZ
            hf += b[2] - a[2]
            hc += b[3] - a[3]
        gbits = sorted(r["gbit"] for r in rs)
        ev = {k: sum(r[k] for r in rs) / gib / 1024 for k in ("ctxt", "intr", "pgfault")}
        ev["host_faults"] = hf / gib / 1024
        ev["host_switches"] = hc / gib / 1024
        per[via] = dict(ev=ev, gib=gib, wall=wall, busy=busy, idle=idle, hu=hu, hs=hs, gbits=gbits)
    # Samples are at perf's default 4000 Hz (cpu-clock): 0.25 ms each.
    ms = 1000 / FREQ
    print("| relay | runs | GiB | Gbit/s median (min-max) | wall s/GiB | guest busy | host user s/GiB | host system s/GiB | host CPU / wall | samples/GiB (guest kernel + user) | guest switches/MiB | guest interrupts/MiB | guest page faults/MiB | host switches/MiB | host page faults/MiB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for via in vias:
        p = per[via]
        g = p["gbits"]
        med = g[len(g) // 2]
        busy = p["busy"] / max(1, p["busy"] + p["idle"])
        print(
            f"| {via} | {len(g)} | {p['gib']:.2f} | {med:.2f} ({g[0]:.2f}-{g[-1]:.2f}) | "
            f"{p['wall'] / p['gib']:.3f} | {busy:.0%} | {p['hu'] / p['gib']:.3f} | "
            f"{p['hs'] / p['gib']:.3f} | {(p['hu'] + p['hs']) / p['wall']:.0%} | "
            f"{total[via] / p['gib']:.0f} | {p['ev']['ctxt']:.1f} | {p['ev']['intr']:.1f} | "
            f"{p['ev']['pgfault']:.1f} | {p['ev']['host_switches']:.1f} | {p['ev']['host_faults']:.1f} |"
        )
    print()
    names = collections.Counter()
    for via in vias:
        for n, c in samples[via].items():
            names[n] += c / per[via]["gib"]
    head = " | ".join(f"{v} ms/GiB" for v in vias)
    print(f"| function | {head} | {vias[0]} / {vias[1] if len(vias) > 1 else '-'} |")
    print("|---|" + "---:|" * (len(vias) + 1))
    for n, _ in names.most_common(top):
        vals = [samples[v][n] * ms / per[v]["gib"] for v in vias]
        ratio = f"{vals[0] / vals[1]:.2f}" if len(vals) > 1 and vals[1] else "-"
        print(f"| {n} | " + " | ".join(f"{x:.1f}" for x in vals) + f" | {ratio} |")
    print("| all | " + " | ".join(f"{total[v] * ms / per[v]['gib']:.1f}" for v in vias) + " | |")
    # The same samples by subsystem, from the function's name (a rough cut, but one that
    # adds up: every sample falls in one group).
    groups = [
        ("io_uring", ("io_", "__io_", "tctx_", "task_work", "sys_io_uring")),
        ("memcpy / memset", ("memcpy", "memset")),
        ("UML user-memory access", ("copy_chunk", "buffer_op", "do_op_one_page", "maybe_map", "virt_to_pte")),
        ("guest user space", ("[guest user space]",)),
        ("vsock", ("vsock", "virtio")),
        ("TCP / IP", ("tcp", "inet", "ip_", "sk_", "skb", "sock", "__skb", "netif", "net_rx", "loopback")),
        ("scheduler / wake-ups", ("sched", "schedule", "wake", "enqueue", "dequeue", "vruntime", "update_", "switch", "place_entity", "pick_")),
        ("UML signals / timers", ("signal", "timer", "um_", "userspace")),
        ("page allocator / slab", ("page", "kmem", "kfree", "slab", "alloc", "free")),
    ]

    def group(name):
        bare = name.lstrip("_")
        for label, keys in groups:
            if label == "io_uring":
                if bare.startswith(("io_", "tctx_", "task_work", "sys_io_uring")) or "io_uring" in name:
                    return label
            elif any(k in name for k in keys):
                return label
        return "other"

    print()
    print(f"| group | {head} | {vias[0]} / {vias[1] if len(vias) > 1 else '-'} |")
    print("|---|" + "---:|" * (len(vias) + 1))
    by_group = collections.defaultdict(collections.Counter)
    for v in vias:
        for n, c in samples[v].items():
            by_group[group(n)][v] += c
    for label in [g for g, _ in groups] + ["other"]:
        vals = [by_group[label][v] * ms / per[v]["gib"] for v in vias]
        ratio = f"{vals[0] / vals[1]:.2f}" if len(vals) > 1 and vals[1] else "-"
        print(f"| {label} | " + " | ".join(f"{x:.1f}" for x in vals) + f" | {ratio} |")


FREQ = int(os.environ.get("PROFILE_FREQ", "4000"))

if __name__ == "__main__":
    if sys.argv[1] == "poll":
        poll(sys.argv[2], sys.argv[3])
    else:
        report(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 25)
