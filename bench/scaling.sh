#!/usr/bin/env bash
# Reactor scaling: 4 KiB random-read IOPS of spinblk for 1, 2, 4, ...
# reactors on a malloc disk, one virtqueue per reactor, one pinned client
# thread per queue.
#
#   bench/scaling.sh [options]
#
# N reactors take N cores (spinblk --cpus) and the client takes N other
# cores, so a point with N reactors needs 2N allowed cores; points that do
# not fit are skipped with a message (on a 2-core machine only N=1 runs).
# Target and client never share a core: a busy-polling reactor sharing a
# core with the thread it serves measures the scheduler, not spinblk.
#
# Options (environment variables in brackets):
#   --max N          most reactors (default 8; capped by the cores) [MAX_REACTORS]
#   --iodepth N      requests in flight per queue (default 32) [IODEPTH]
#   --size SIZE      malloc disk size (default 1G) [SIZE]
#   --runtime S --ramp S   per point (default 5 and 1) [RUNTIME, RAMP]
#   --poll           client busy-polls completions [CLIENT_POLL=1]
#   --no-prefill     skip the sequential fill before each point
#   --out DIR        results directory (default target/bench-results/scaling-DATE) [OUT]
#
# Prints a table (reactors, IOPS, client CPU%, target CPU%, ...) and writes
# results.csv and table.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

max=${MAX_REACTORS:-8}
iodepth=${IODEPTH:-32}
size=${SIZE:-1G}
runtime=${RUNTIME:-5}
ramp=${RAMP:-1}
poll=${CLIENT_POLL:-0}
prefill=1
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --max) max=$2; shift 2 ;;
    --iodepth) iodepth=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --poll) poll=1; shift ;;
    --no-prefill) prefill=0; shift ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "scaling.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
((runtime >= 2)) || { echo "scaling.sh: --runtime must be at least 2" >&2; exit 2; }

out=${out:-$BL_ROOT/target/bench-results/scaling-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
csv=$out/results.csv
rm -f "$csv"
run=$(mktemp -d /tmp/spinblk-scaling.XXXXXX)
trap 'bl_cleanup; rm -rf "$run"' EXIT
bl_snapshot_bins "$out"

read -r -a allowed <<<"$(bl_cpus)"
ncores=${#allowed[@]}
mode=interrupt
mode_flag=()
if ((poll)); then mode=poll; mode_flag=(--poll); fi

points=()
skipped=()
for ((n = 1; n <= max; n *= 2)); do
  if ((2 * n <= ncores)); then points+=("$n"); else skipped+=("$n"); fi
done

{
  echo "scaling.sh $(date -Is)"
  echo "machine: $(bl_sysinfo)"
  echo "malloc $size, 4k randread, QD$iodepth per queue, client $mode mode, ${runtime}s/point (+${ramp}s ramp)"
  echo "reactor counts run: ${points[*]:-none}"
  if ((${#skipped[@]})); then
    echo "skipped: ${skipped[*]} reactor(s): each needs 2N cores (N reactors + N client threads), $ncores allowed"
  fi
} | tee "$out/run-info.txt" >&2

join() { local IFS=,; echo "$*"; }

for n in "${points[@]}"; do
  tc=$(join "${allowed[@]:0:n}")
  cc=$(join "${allowed[@]:n:n}")
  sock=$run/spinblk-$n.sock
  bl_start "spinblk($n)" "$out/logs/target-$n.log" "$tc" \
    "$SPINBLK" --socket "$sock" --malloc "$size" --cpus "$tc" --num-queues "$n"
  pid=$BL_PID
  if ! bl_wait_socket "$sock" "$pid"; then
    bl_log "spinblk with $n reactor(s) did not come up; see $out/logs/target-$n.log"
    bl_stop "$pid" spinblk || true
    continue
  fi
  if ((prefill)); then
    taskset -c "$cc" "$BENCH" --socket "$sock" --rw write --bs 128k --iodepth 8 --queues "$n" \
      --cpus "$cc" --runtime 3 --json >/dev/null 2>>"$out/logs/client.log" ||
      bl_log "warning: prefill failed"
  fi
  bl_point --csv "$csv" --suite scaling --client spinblk-bench --target spinblk \
    --target-pid "$pid" --target-cores "$tc" --disk "malloc $size" --workload "4k-randread-qd$iodepth-${n}q" \
    --rw randread --bs 4096 --iodepth "$iodepth" --queues "$n" --reactors "$n" --mode "$mode" \
    --note "target cpus $tc, client cpus $cc" \
    --runtime "$runtime" --sample-from "$ramp" --sample-len "$runtime" \
    --client-log "$out/logs/client.log" -- \
    taskset -c "$cc" "$BENCH" --socket "$sock" --rw randread --bs 4k --iodepth "$iodepth" \
    --queues "$n" --cpus "$cc" --runtime "$runtime" --ramp "$ramp" "${mode_flag[@]}" --json ||
    bl_log "warning: $n reactor(s): no row recorded"
  bl_stop "$pid" spinblk || bl_log "warning: spinblk exited with status $?"
done

echo
echo "== reactor scaling: 4 KiB randread, malloc $size, QD$iodepth per queue, one queue and one client thread per reactor, client $mode mode =="
echo "machine: $(bl_sysinfo)"
if ((${#skipped[@]})); then
  echo "not run: ${skipped[*]} reactor(s) - each point needs 2N cores (N reactors + N client threads) and $ncores are allowed"
fi
if [[ -s $csv ]]; then
  "${BL_TOOL[@]}" table --kind scaling --markdown "$out/table.md" "$csv" | tee "$out/table.txt"
  echo "target CPU% is of one core (N reactors busy-polling: about N x 100%)"
  echo "results: $out"
else
  echo "no results"
fi
