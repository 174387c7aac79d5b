#!/usr/bin/env bash
# What dirty logging (live migration, issue 14) costs on the data path: spinblk --null with
# logging off and with logging on (SPINBLK_BENCH_DIRTY_LOG=1 makes every queue log into a
# private bitmap as if a migration were running), the same libblkio client, alternating in
# back-to-back pairs over several rounds. Prints each run, then the best run of each mode, the
# best-of ratio and the median of the per-round ratios (on / off).
#
#   bench/dirty-log-cost.sh [--rounds N] [--runtime S] [--rw randread|randwrite] [--qd N]
#                           [--target-cpu N] [--client-cpu N]
#
# Needs target/release/spinblk and spinblk-bench (or SPINBLK_BIN / BENCH_BIN).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=6 runtime=4 rw=randread qd=32 target_cpu=1 client_cpu=0
while (($#)); do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --rw) rw=$2; shift 2 ;;
    --qd) qd=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "dirty-log-cost.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
spinblk=${SPINBLK_BIN:-$root/target/release/spinblk}
bench=${BENCH_BIN:-$root/target/release/spinblk-bench}
for b in "$spinblk" "$bench"; do
  [[ -x $b ]] || { echo "dirty-log-cost.sh: $b missing (cargo build --release)" >&2; exit 1; }
done
dir=$(mktemp -d /tmp/spinblk-dirtylog.XXXXXX)
pid=
trap '[[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

echo "dirty-log-cost.sh $(date -Is): null 1G, 4k $rw QD$qd, target core $target_cpu, client core $client_cpu, $rounds rounds x ${runtime}s, load $(cut -d' ' -f1-3 /proc/loadavg)"
results=()
for ((round = 1; round <= rounds; round++)); do
  order=(off on)
  ((round % 2 == 0)) && order=(on off)
  for mode in "${order[@]}"; do
    sock=$dir/$mode.sock
    rm -f "$sock"
    if [[ $mode == on ]]; then
      SPINBLK_BENCH_DIRTY_LOG=1 taskset -c "$target_cpu" "$spinblk" --socket "$sock" --null 1G \
        --cpus "$target_cpu" --num-queues 2 >"$dir/$mode.log" 2>&1 &
    else
      taskset -c "$target_cpu" "$spinblk" --socket "$sock" --null 1G --cpus "$target_cpu" \
        --num-queues 2 >"$dir/$mode.log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
    [[ -S $sock ]] || { echo "spinblk did not start:"; cat "$dir/$mode.log"; exit 1; }
    iops=$("$bench" --socket "$sock" --rw "$rw" --bs 4k --iodepth "$qd" --runtime "$runtime" \
      --ramp 1 --cpus "$client_cpu" --json |
      python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))')
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
    echo "round $round logging $mode: $iops IOPS"
    results+=("$round $mode $iops")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
runs = {}
for line in sys.stdin:
    r, mode, iops = line.split()
    runs.setdefault(int(r), {})[mode] = int(iops)
off = [v["off"] for v in runs.values()]
on = [v["on"] for v in runs.values()]
pairs = [v["on"] / v["off"] for v in runs.values()]
print(f"best: off {max(off)}, on {max(on)}; best-of ratio on/off {max(on) / max(off):.3f}")
print("pair ratios on/off (round order): " + " ".join(f"{p:.3f}" for p in pairs))
print(f"median pair ratio on/off {statistics.median(pairs):.3f}")
'
