#!/usr/bin/env bash
# Where the user-mode-linux guest's CPU goes, per relay: the guest kernel runs as ordinary host
# processes, so the host's `perf record` samples it (user space only: perf_event_paranoid=2 is
# enough), and the guest prints its own /proc/kallsyms to name the addresses (Debian's
# linux.uml is stripped). vsplice and the copying relay take turns on one pair.
# Usage: perf/uml-profile.sh OUTDIR [PAIR] [RUNS] [MIB] [extra scenario words, e.g. --with "-b 256K"]
# Needs VSPLICE_LAB_DIR (the lab cache) and a release build of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:?OUTDIR}"); pair=${2:-vsock-tcp}; runs=${3:-4}; mib=${4:-256}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$out"
data=$out/perf.data
python3 perf/uml-profile.py poll "$data" "$out/poll.txt" &
poller=$!
# NOPERF=1: no perf record, only the CPU counts (a shell that runs the kernel stands in for
# perf as the parent the poller looks for).
wrap="perf record -q -e cpu-clock:u -k realtime -o $data --"
[ -n "${NOPERF:-}" ] && wrap="sh -c \"\$@\";: $data"
# PIN=CPU: the whole guest on one host CPU (taskset), so that no handoff between its host
# processes waits for another CPU to wake up.
[ -n "${PIN:-}" ] && wrap="taskset -c $PIN $wrap"
VSPLICE_LAB_WRAP="$wrap" \
  cargo test --release --test vsock_guest -- relay_profile_on_vsock -- \
  --pair "$pair" --runs "$runs" --mib "$mib" "$@" > "$out/console.txt" 2>&1 || true
kill "$poller"; wait "$poller" 2>/dev/null || true
if [ -n "${NOPERF:-}" ]; then : > "$out/script.txt"; else
  perf script -i "$data" -F pid,time,ip --ns 2>/dev/null > "$out/script.txt"; fi
grep -v '^KSYM' "$out/console.txt" | grep -E 'PROFILE|passed|failed|panicked' | head -40
python3 perf/uml-profile.py report "$out/console.txt" "$out/script.txt" "$out/poll.txt" 30 | tee "$out/report.md"
