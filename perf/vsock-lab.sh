#!/usr/bin/env bash
# vsock relay speed, relatively, in the user-mode-linux guest lab: six pairs (vsock, TCP, UNIX)
# through no relay, vsplice (default and every --mode), a copying relay and socat, one guest,
# interleaved rounds; prints the table. Usage: perf/vsock-lab.sh [ROUNDS] [MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test vsock_guest -- relay_speed_table_on_vsock -- --rounds "${1:-3}" --mib "${2:-32}"
