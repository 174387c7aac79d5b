#!/usr/bin/env bash
# CPU profile of spinblk's reactor under load (perf record -g on the target).
#
#   bench/profile.sh [options]
#
# Starts spinblk pinned to the target core on a null (or filled malloc) disk,
# drives it from the client core with SPDK's bdevperf (virtio-user; needs
# SPDK_DIR and hugepages, see compare.sh) or with spinblk-bench (libblkio),
# and while the load runs records the target process with
# `perf record -g -e cpu-clock` (this guest has no hardware PMU: cycles
# cannot be counted, cpu-clock sampling works). Prints the IOPS of the run
# and the top symbols by self time (`perf report --no-children`), and keeps
# perf.data, the full report and the logs in the results directory.
#
# Options (environment variables in brackets):
#   --client bdevperf|libblkio   (default bdevperf when SPDK_DIR is set,
#                                otherwise libblkio) [CLIENT]
#   --disk null|malloc    (default null; malloc is filled first) [DISK]
#   --size SIZE           (default 1G) [SIZE]
#   --rw RW               randread|randwrite (default randread) [RW]
#   --qd N                queue depth (default 32) [QD]
#   --runtime S           load duration (default 12); perf records from 1 s
#                         in for runtime - 3 s [RUNTIME]
#   --freq HZ             sampling frequency (default 4999) [FREQ]
#   --top N               symbols printed (default 15) [TOP]
#   --call-graph fp|dwarf fp: `perf record -g` (frame pointers: Rust release
#                         code has none, so callers are mostly lost; fine for
#                         self time); dwarf: `--call-graph dwarf` (callers of
#                         inlined code too; use a lower --freq, e.g. 999)
#                         (default fp) [CALL_GRAPH]
#   --target-cpu N        (default 1) [TARGET_CPU]
#   --client-cpu N        (default 0) [CLIENT_CPU]
#   --vq-count N          virtqueues (default 2) [VQ_COUNT]
#   --spdk DIR            built SPDK tree [SPDK_DIR]
#   --out DIR             (default target/bench-results/profile-DATE) [OUT]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib-spdk.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-spdk.sh"

spdk_dir=${SPDK_DIR:-}
client=${CLIENT:-}
disk=${DISK:-null}
size=${SIZE:-1G}
rw=${RW:-randread}
qd=${QD:-32}
runtime=${RUNTIME:-12}
freq=${FREQ:-4999}
top=${TOP:-15}
call_graph=${CALL_GRAPH:-fp}
target_cpu=${TARGET_CPU:-1}
client_cpu=${CLIENT_CPU:-0}
vq_count=${VQ_COUNT:-2}
bdevperf_mem=${BDEVPERF_MEM:-1024}
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --client) client=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --rw) rw=$2; shift 2 ;;
    --qd) qd=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --freq) freq=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --call-graph) call_graph=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --vq-count) vq_count=$2; shift 2 ;;
    --spdk) spdk_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "profile.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
client=${client:-$([[ -n $spdk_dir ]] && echo bdevperf || echo libblkio)}
[[ $client == bdevperf || $client == libblkio ]] || bl_die "--client must be bdevperf or libblkio"
[[ $disk == null || $disk == malloc ]] || bl_die "--disk must be null or malloc"
[[ $rw == randread || $rw == randwrite ]] || bl_die "--rw must be randread or randwrite"
((runtime >= 5)) || bl_die "--runtime must be at least 5"
case $call_graph in
  fp) cg_args=(-g) ;;
  dwarf) cg_args=(--call-graph dwarf) ;;
  *) bl_die "--call-graph must be fp or dwarf" ;;
esac
command -v perf >/dev/null 2>&1 || bl_die "perf not found (Debian: apt-get install -y linux-perf)"

out=${out:-$BL_ROOT/target/bench-results/profile-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
run=$(mktemp -d /tmp/spinblk-profile.XXXXXX)
trap 'bl_cleanup; rm -rf "$run"' EXIT
bl_snapshot_bins "$out"
size_bytes=$(python3 -c "
import sys; s=sys.argv[1].strip().upper(); m={'K':10,'M':20,'G':30,'T':40}
print(int(s[:-1])<<m[s[-1]] if s[-1] in m else int(s))" "$size")

# As compare.sh: a null disk that leaves read buffers alone, as SPDK's does.
bl_null_flags "$SPINBLK" "$disk"
{
  echo "profile.sh $(date -Is)"
  echo "machine: $(bl_sysinfo)"
  echo "spinblk --$disk $size ${BL_NULL_FLAGS[*]} --cpus $target_cpu --num-queues $vq_count; client $client on core $client_cpu; 4k $rw QD$qd"
  echo "perf: $(perf --version 2>&1); record ${cg_args[*]} -e cpu-clock -F $freq for $((runtime - 3))s"
} | tee "$out/run-info.txt" >&2

sock=$run/spinblk.sock
bl_start spinblk "$out/logs/target.log" "$target_cpu" "$SPINBLK" --socket "$sock" "--$disk" "$size" \
  "${BL_NULL_FLAGS[@]}" --cpus "$target_cpu" --num-queues "$vq_count"
spid=$BL_PID
bl_wait_socket "$sock" "$spid" || bl_die "spinblk did not start (see $out/logs/target.log)"

if [[ $client == bdevperf ]]; then
  [[ -n $spdk_dir ]] || bl_die "--client bdevperf needs SPDK_DIR"
  spdk_check "$spdk_dir" || exit 1
  spdk_huge_setup "$run" "$bdevperf_mem" || bl_die "hugepages needed for bdevperf"
  bdevperf_conf "$run/bdevperf.json" "$vq_count" 256 "$sock"
  if [[ $disk == malloc ]]; then
    bdevperf_oneshot "$out/logs/fill.log" "$run/fill.sock" "$client_cpu" "$run/bdevperf.json" "$bdevperf_mem" \
      8 write 131072 "$(python3 -c "import sys; print(max(3, int(sys.argv[1]) // (300 << 20) + 2))" "$size_bytes")" ||
      bl_log "warning: fill failed (see $out/logs/fill.log)"
  fi
  bdevperf_start "$out/logs/bdevperf.log" "$client_cpu" "$run/bdevperf.json" "$run/bdevperf.sock" \
    "$bdevperf_mem" "$qd" "$rw" 4096 "$runtime" || bl_die "bdevperf did not attach (see $out/logs/bdevperf.log)"
  spdk_rpc "$run/bdevperf.sock" perform_tests "" --timeout $((runtime + 60)) >"$out/result.json" &
  load_pid=$!
else
  if [[ $disk == malloc ]]; then
    taskset -c "$client_cpu" "$BENCH" --socket "$sock" --rw write --bs 128k --iodepth 8 --cpus "$client_cpu" \
      --runtime "$(python3 -c "import sys; print(max(3, int(sys.argv[1]) // (300 << 20) + 2))" "$size_bytes")" \
      >"$out/logs/fill.log" 2>&1 || bl_log "warning: fill failed (see $out/logs/fill.log)"
  fi
  taskset -c "$client_cpu" "$BENCH" --socket "$sock" --rw "$rw" --bs 4k --iodepth "$qd" --cpus "$client_cpu" \
    --runtime "$runtime" --json >"$out/result.json" 2>"$out/logs/client.log" &
  load_pid=$!
fi

sleep 1
# The client's pid: bdevperf, or spinblk-bench (started in the background).
cpid=$([[ $client == bdevperf ]] && echo "$BL_PID" || echo "$load_pid")
bl_log "perf record ${cg_args[*]} on spinblk (pid $spid) for $((runtime - 3))s"
snap0=$("${BL_TOOL[@]}" cpu-snap --pids "$spid,$cpid" --cores "$(bl_expand_cpus "$target_cpu")")
perf record "${cg_args[@]}" -e cpu-clock -F "$freq" -p "$spid" -o "$out/perf.data" -- sleep $((runtime - 3)) \
  >"$out/logs/perf-record.log" 2>&1 || bl_log "warning: perf record failed (see $out/logs/perf-record.log)"
snap1=$("${BL_TOOL[@]}" cpu-snap --pids "$spid,$cpid" --cores "$(bl_expand_cpus "$target_cpu")")
cpu_line=$("${BL_TOOL[@]}" cpu-diff --names "spinblk,client" "$snap0" "$snap1")
wait "$load_pid" || bl_log "warning: the client exited with status $?"
bl_stop "$spid" spinblk || bl_log "warning: spinblk exited with status $?"

iops=$(python3 -c "
import json, sys
t = open(sys.argv[1]).read()
r = json.loads(t[t.index('{'):])
print(round(sum(j['iops'] for j in r['results'])) if 'results' in r else round(r['iops']))" "$out/result.json" 2>/dev/null || echo "?")
perf report -i "$out/perf.data" --no-children --sort symbol --stdio >"$out/report-self.txt" 2>"$out/logs/perf-report.log" || true
perf report -i "$out/perf.data" --children --sort symbol --stdio -g none >"$out/report-children.txt" 2>>"$out/logs/perf-report.log" || true
# Callers of each symbol (most useful with --call-graph dwarf).
perf report -i "$out/perf.data" --no-children --sort symbol --stdio -G --percent-limit 2 \
  >"$out/report-callers.txt" 2>>"$out/logs/perf-report.log" || true
samples=$(grep -m1 -o 'of event .*' "$out/report-self.txt" || true)
{
echo
echo "== spinblk reactor profile: 4k $rw QD$qd, $disk $size, client $client; $iops IOPS during the run (with perf attached) =="
echo "CPU while recording: $cpu_line"
echo "perf record ${cg_args[*]} -e cpu-clock -F $freq, $((runtime - 3))s; samples: $(grep -m1 -o '^# Samples: [^ ]*' "$out/report-self.txt" | awk '{print $3}') $samples"
echo "top $top symbols by self time (perf report --no-children --sort symbol):"
grep -E '^ +[0-9.]+%' "$out/report-self.txt" | head -n "$top" | sed -E 's/ +/ /g; s/^ //; s/( -)+ *$//'
} | tee "$out/summary.txt"
echo "results: $out (summary.txt, perf.data, report-self.txt, report-children.txt, report-callers.txt, logs/)"
