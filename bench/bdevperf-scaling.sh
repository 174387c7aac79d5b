#!/usr/bin/env bash
# Target-core scaling against SPDK through SPDK's bdevperf: bench/compare.sh
# --client bdevperf at 1, 2, 4, ... target cores, bdevperf on as many other
# cores.
#
#   SPDK_DIR=DIR bench/bdevperf-scaling.sh [options] [-- compare.sh options]
#
# For N target cores: bdevperf takes N allowed cores and the target the N
# after them, leaving the first allowed core to the rest of the system when
# there are 2N + 1 (on 2 cores, N = 1: bdevperf on 0, the target on 1, as
# compare.sh's defaults); a point that needs more than the allowed cores is
# skipped with a message. At each
# point spinblk serves one controller from N reactors (2N virtqueues,
# bdevperf -C) and SPDK's vhost app N controllers, one per core (SPDK serves
# a controller from one core only), each on a disk of SIZE/N. See
# compare.sh --help for the rest. Each point's results land in OUT/nN/;
# at the end the per-pair ratio table of every point is printed.
#
# Options (environment variables in brackets):
#   --cores LIST   target core counts (default 1,2,4,8) [CORES]
#   --out DIR      results directory (default target/bench-results/bdevperf-scaling-DATE) [OUT]
#   anything after -- goes to compare.sh (e.g. --rounds 4 --disk null
#   --workloads randread-qd32 --targets spinblk,spdk-huge)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cores=${CORES:-1,2,4,8}
out=${OUT:-}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --cores) cores=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bdevperf-scaling.sh: unknown option $1 (see --help; compare.sh options go after --)" >&2; exit 2 ;;
  esac
done
for a in "$@"; do
  case $a in
    --target-cpu | --client-cpu | --out | --client)
      echo "bdevperf-scaling.sh: $a is set per point by this script" >&2; exit 2 ;;
  esac
done
[[ -n ${SPDK_DIR:-} ]] || { echo "bdevperf-scaling.sh: needs SPDK_DIR (a built SPDK tree)" >&2; exit 1; }

read -r -a allowed <<<"$(bl_cpus)"
ncores=${#allowed[@]}
out=${out:-$BL_ROOT/target/bench-results/bdevperf-scaling-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

points=()
skipped=()
for n in ${cores//,/ }; do
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 1)) || { echo "bdevperf-scaling.sh: --cores: $n is not a count" >&2; exit 2; }
  if ((2 * n <= ncores)); then points+=("$n"); else skipped+=("$n"); fi
done
if ((${#skipped[@]})); then
  bl_log "skipped: ${skipped[*]} target core(s): each point needs 2N cores (N target, N bdevperf) and $ncores are allowed"
fi

# join FROM COUNT: allowed[FROM..FROM+COUNT-1] as a comma list.
join() { local IFS=,; echo "${allowed[*]:$1:$2}"; }

for n in "${points[@]}"; do
  off=$((2 * n + 1 <= ncores ? 1 : 0))
  cc=$(join "$off" "$n")
  tc=$(join $((off + n)) "$n")
  bl_log "== $n target core(s): target $tc, bdevperf $cc"
  bash "$BL_ROOT/bench/compare.sh" --client bdevperf --target-cpu "$tc" --client-cpu "$cc" \
    --out "$out/n$n" "$@" >"$out/n$n.log" 2>&1 ||
    bl_log "warning: compare.sh at $n core(s) exited with status $? (see $out/n$n.log)"
done

echo
echo "== bdevperf-scaling: target cores ${points[*]:-none} (machine: $(bl_sysinfo))"
if ((${#skipped[@]})); then
  echo "not run: ${skipped[*]} target core(s) - each point needs 2N cores and $ncores are allowed"
fi
for n in "${points[@]}"; do
  echo
  echo "-- $n target core(s): $(sed -n 's/^target core(s): //p' "$out/n$n/run-info.txt" 2>/dev/null)"
  if [[ -s $out/n$n/pairs.txt ]]; then
    # The first ratio table: per-pair ratios, their median, best-of, per busy core.
    awk '/median pair ratio/ {on = 1} on && /^$/ {exit} on' "$out/n$n/pairs.txt"
  else
    echo "no results (see $out/n$n.log)"
  fi
done
echo "results: $out (nN/ per point: results.csv, pairs.txt, logs/)"
