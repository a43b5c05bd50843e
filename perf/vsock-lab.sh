#!/usr/bin/env bash
# vsock relay speed, relatively, in the guest labs; prints the tables.
# 1. user-mode-linux guest: six pairs (vsock, TCP, UNIX) through no relay, vsplice (default and
#    every --mode), a copying relay and socat, one guest, interleaved rounds.
# 2. QEMU TCG guest behind vhost-device-vsock (hybrid vsock): host -> guest (TCP -> the
#    backend's UNIX socket) and guest -> host (its `<uds>_PORT` listener -> TCP) through no
#    relay, vsplice, the copying relay and socat, relays on the machine, interleaved rounds.
# Usage: perf/vsock-lab.sh [ROUNDS] [MIB] [HYBRID_ROUNDS] [HYBRID_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test vsock_guest -- relay_speed_table_on_vsock -- --rounds "${1:-3}" --mib "${2:-32}"
cargo test --release --test hybrid_qemu -- hybrid_speed_table -- --rounds "${3:-9}" --mib "${4:-256}"
