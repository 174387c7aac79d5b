#!/usr/bin/env bash
# Runs a standard workload matrix with spinblk-bench against one
# vhost-user-blk socket and prints one JSON object per line (plus a short
# human-readable table on stderr).
#
#   bench/matrix.sh SOCKET [CLIENT_CPU] [RUNTIME] [RAMP]
#
# Set BENCH to use another binary (default: target/release/spinblk-bench).
set -euo pipefail

sock=${1:?usage: $0 SOCKET [CLIENT_CPU] [RUNTIME] [RAMP]}
cpu=${2:-1}
runtime=${3:-5}
ramp=${4:-1}
bench=${BENCH:-target/release/spinblk-bench}

cases=(
  "--rw randread --bs 4k --iodepth 1"
  "--rw randread --bs 4k --iodepth 32"
  "--rw randwrite --bs 4k --iodepth 32"
  "--rw read --bs 4k --iodepth 32"
  "--rw write --bs 4k --iodepth 32"
  "--rw randrw --rwmixread 70 --bs 4k --iodepth 32"
  "--rw read --bs 128k --iodepth 8"
)

for mode in "" "--poll"; do
  for c in "${cases[@]}"; do
    # shellcheck disable=SC2086
    out=$("$bench" --socket "$sock" $c $mode --cpus "$cpu" \
          --runtime "$runtime" --ramp "$ramp" --json) || true
    echo "$out"
    python3 - "$out" "$c $mode" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF' >&2 || true
import json, sys
r = json.loads(sys.argv[1])
l = r["lat_us"]
print(f'{sys.argv[2]:<55} IOPS={r["iops"]:>9.0f} MiB/s={r["mib_s"]:>8.1f} '
      f'p50={l["p50"]:>8.1f} p99={l["p99"]:>9.1f} p99.9={l["p99_9"]:>9.1f} '
      f'max={l["max"]:>9.1f} cpu={r["cpu"]["pct_one_core"]:>5.1f}% '
      f'err={r["errors"]} load={sys.argv[3]}')
EOF
  done
done
