#!/usr/bin/env bash
# The CPU cost of QoS when no limit holds anything back: 4 KiB random reads at QD32 on a null
# disk, with no limit set (the queues have no limiter: one branch per request) against a limit
# far above what the machine can do (bdev_set_qos_limit --rw-ios-per-sec 100000000: every
# request goes through the limiter's client path, which never throttles). One spinblk, the
# limit switched by SPDK's client between runs, in alternating pairs (A B, then B A, ...) since
# the machine's speed drifts.
#
#   bench/qos-cost.sh [options]
#
# Options (environment variables in brackets):
#   --pairs N        pairs of runs (default 6) [PAIRS]
#   --runtime S --ramp S   per run (default 5 and 1) [RUNTIME, RAMP]
#   --limit IOPS     the "very high" limit (default 100000000) [LIMIT]
#   --target-cpu C   the reactor's core (default: the first allowed) [TARGET_CPU]
#   --client-cpu C   the client's core (default: the second allowed, else the first) [CLIENT_CPU]
#   --out DIR        results directory (default target/bench-results/qos-cost-DATE) [OUT]
#
# Prints every run (IOPS, target CPU per I/O) and, per figure, the ratio of the limited runs'
# best to the unlimited runs' best and the median of the pair ratios (limited / unlimited):
# 1.00 = no cost. Writes results.csv and summary.txt. Needs target/release/spinblk and
# spinblk-bench (cargo build --release -p spinblk -p spinblk-bench) and SPDK's client
# (scripts/rpc/venv.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pairs=${PAIRS:-6}
runtime=${RUNTIME:-5}
ramp=${RAMP:-1}
limit=${LIMIT:-100000000}
target_cpu=${TARGET_CPU:-}
client_cpu=${CLIENT_CPU:-}
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --pairs) pairs=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "qos-cost.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
((pairs >= 1 && runtime >= 2)) || { echo "qos-cost.sh: --pairs >= 1 and --runtime >= 2" >&2; exit 2; }

read -r -a allowed <<<"$(bl_cpus)"
target_cpu=${target_cpu:-${allowed[0]}}
client_cpu=${client_cpu:-${allowed[1]:-${allowed[0]}}}
out=${out:-$BL_ROOT/target/bench-results/qos-cost-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
csv=$out/results.csv
rm -f "$csv"
run=$(mktemp -d /tmp/spinblk-qoscost.XXXXXX)
trap 'bl_cleanup; rm -rf "$run"' EXIT
bl_snapshot_bins "$out"
rpc_bin=$(bash "$BL_ROOT/scripts/rpc/venv.sh") || bl_die "SPDK's client: scripts/rpc/venv.sh failed"
R=("$rpc_bin" -s "$run/rpc.sock")

bl_start spinblk "$out/logs/spinblk.log" "$target_cpu" "$SPINBLK" -r "$run/rpc.sock" -S "$run" \
  --cpus "$target_cpu"
tpid=$BL_PID
bl_wait_socket "$run/rpc.sock" "$tpid" || bl_die "spinblk did not start (see $out/logs/spinblk.log)"
"${R[@]}" bdev_null_create n0 1024 512 >/dev/null
"${R[@]}" vhost_create_blk_controller --cpumask "[$target_cpu]" vq n0 >/dev/null
bl_wait_socket "$run/vq" "$tpid" || bl_die "no controller socket"

{
  echo "qos-cost.sh $(date -Is)"
  echo "machine: $(bl_sysinfo)"
  echo "null 1 GiB, 4k randread QD32, 1 queue; reactor on cpu $target_cpu, client on cpu $client_cpu;"
  echo "A = no limit (no limiter), B = rw_ios_per_sec $limit (limiter client path, never throttles)"
  echo "$pairs pairs of ${runtime}s runs (+${ramp}s ramp), order A B, B A, ..."
} | tee "$out/summary.txt"

one() { # one MODE PAIR
  local mode=$1 k=$2
  if [[ $mode == A ]]; then
    "${R[@]}" bdev_set_qos_limit n0 --rw-ios-per-sec 0 >/dev/null
  else
    "${R[@]}" bdev_set_qos_limit n0 --rw-ios-per-sec "$limit" >/dev/null
  fi
  bl_point --csv "$csv" --suite qos-cost --target spinblk --target-pid "$tpid" \
    --target-cores "$target_cpu" --disk null --workload "$mode" --rw randread --bs 4k \
    --iodepth 32 --queues 1 --reactors 1 --note "pair $k" --runtime "$runtime" \
    --client-log "$out/logs/client-$mode-$k.log" -- \
    taskset -c "$client_cpu" "$BENCH" --socket "$run/vq" --rw randread --bs 4k --iodepth 32 \
    --queues 1 --runtime "$runtime" --ramp "$ramp" --size 1G --json
}
for ((k = 1; k <= pairs; k++)); do
  if ((k % 2)); then one A "$k"; one B "$k"; else one B "$k"; one A "$k"; fi
done

python3 - "$csv" <<'PY' | tee -a "$out/summary.txt"
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"].startswith("ok")]
by = {}
for r in rows:
    by.setdefault(r["note"], {})[r["workload"]] = r
def f(r, k):
    try:
        return float(r[k])
    except (KeyError, ValueError):
        return None
print("run            IOPS   target us/IO  load")
for r in rows:
    print(f"{r['note']:>7} {r['workload']}  {r['iops']:>10}  {r['target_cpu_us_per_io']:>10}  {r['load1']}")
for key, better, label in (("iops", max, "IOPS"), ("target_cpu_us_per_io", min, "target CPU per I/O")):
    a = [f(r, key) for r in rows if r["workload"] == "A" and f(r, key)]
    b = [f(r, key) for r in rows if r["workload"] == "B" and f(r, key)]
    pr = [f(p["B"], key) / f(p["A"], key) for p in by.values()
          if "A" in p and "B" in p and f(p["A"], key) and f(p["B"], key)]
    if not a or not b or not pr:
        print(f"{label}: not enough good runs")
        continue
    print(f"{label}, limited (B) / unlimited (A): best-of {better(b) / better(a):.3f}, "
          f"median of {len(pr)} pair ratios {statistics.median(pr):.3f} "
          f"(pairs: {' '.join(f'{x:.3f}' for x in pr)})")
PY
"${R[@]}" bdev_set_qos_limit n0 --rw-ios-per-sec 0 >/dev/null
bl_stop "$tpid" spinblk
echo "results: $out" >&2
