#!/usr/bin/env bash
# Idle, light-load, full-load and shared-core comparison (issue 13): what a
# target costs when its client is connected but idle, how fast it answers a
# light load, what it still does under full load, and what happens when
# another busy process shares its core.
#
#   bench/idle-light.sh [options]
#
# Targets (null disk, SIZE, pinned to the target core; one session each,
# alternating order per round):
#   spinblk-adaptive  spinblk --poll-mode adaptive (only when the binary has
#                     --poll-mode; otherwise skipped with a message)
#   spinblk-busy      spinblk --poll-mode busy (started without the flag,
#                     i.e. today's busy polling, when it does not exist)
#   qsd               qemu-storage-daemon, null-co read-zeroes=on, one iothread
#   spdk              SPDK's vhost app, bdev_null (only with SPDK_DIR; see
#                     compare.sh --client bdevperf for memory and hugepages)
# Client: spinblk-bench (libblkio) on the client core; for spdk SPDK's
# bdevperf (libblkio cannot drive SPDK), which always polls and has no pause
# between requests, so spdk gets only the idle, continuous QD1/QD32 and hog
# QD1 points.
#
# Points per target (4 KiB randread; CPU = the target's CPU time over the
# measured window from /proc/PID/stat, in % of one core):
#   idle       client connected (queues set up, memory mapped), no I/O, IDLE_S seconds
#   light      QD1 with a THINK_US pause after each completion (--think-us),
#              client in interrupt mode and in poll mode: p50/p99, target CPU
#   qd1        continuous QD1, both client modes: p50
#   qd32       QD32, client in interrupt mode: IOPS
#   hog-*      the same light (interrupt) and continuous QD1 (both modes)
#              points while `sh -c 'while :; do :; done'` runs pinned to the
#              target core
#   sweep      QD1 with pauses of SWEEP_US (each one an offered load), in
#              the client modes of SWEEP_MODES: latency-vs-load.png
# Prints one table (medians over rounds) and issue 13's goals where the rows
# are there; writes results.csv, table.md, latency-vs-load.png.
#
# Options (environment variables in brackets):
#   --targets LIST     spinblk-adaptive,spinblk-busy,qsd,spdk (default: all;
#                      missing ones are skipped with a message) [TARGETS]
#   --size SIZE        null disk size (default 1G) [SIZE]
#   --target-cpu N     (default 1) [TARGET_CPU]
#   --client-cpu N     (default 0) [CLIENT_CPU]
#   --runtime S        per point (default 5) [RUNTIME]
#   --ramp S           per point (default 1) [RAMP]
#   --idle S           idle window (default 10) [IDLE_S]
#   --think-us N       the light load's pause (default 200) [THINK_US]
#   --sweep-us LIST    pauses of the sweep (default 1000,500,200,100,50,20,10,0);
#                      "none" skips the sweep [SWEEP_US]
#   --sweep-modes LIST interrupt,poll (default both) [SWEEP_MODES]
#   --no-hog           skip the shared-core points
#   --rounds N         (default 1) [ROUNDS]
#   --spdk DIR         built SPDK tree [SPDK_DIR]
#   --spdk-huge        run SPDK's vhost app on hugepages (default --no-huge)
#                      [memory: SPDK_MEM MiB, default 1024; bdevperf: BDEVPERF_MEM, 1024]
#   --no-plots         no PNG
#   --out DIR          (default target/bench-results/idle-light-DATE) [OUT]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib-spdk.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-spdk.sh"

targets=${TARGETS:-spinblk-adaptive,spinblk-busy,qsd,spdk}
size=${SIZE:-1G}
target_cpu=${TARGET_CPU:-1}
client_cpu=${CLIENT_CPU:-0}
runtime=${RUNTIME:-5}
ramp=${RAMP:-1}
idle_s=${IDLE_S:-10}
think_us=${THINK_US:-200}
sweep_us=${SWEEP_US:-1000,500,200,100,50,20,10,0}
sweep_modes=${SWEEP_MODES:-interrupt,poll}
hog=1
rounds=${ROUNDS:-1}
spdk_dir=${SPDK_DIR:-}
spdk_huge=0
spdk_mem=${SPDK_MEM:-1024}
bdevperf_mem=${BDEVPERF_MEM:-1024}
plots=1
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --targets) targets=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --idle) idle_s=$2; shift 2 ;;
    --think-us) think_us=$2; shift 2 ;;
    --sweep-us) sweep_us=$2; shift 2 ;;
    --sweep-modes) sweep_modes=$2; shift 2 ;;
    --no-hog) hog=0; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --spdk) spdk_dir=$2; shift 2 ;;
    --spdk-huge) spdk_huge=1; shift ;;
    --no-plots) plots=0; shift ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "idle-light.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
((runtime >= 2)) || bl_die "--runtime must be at least 2"
((idle_s >= 2)) || bl_die "--idle must be at least 2"
for m in ${sweep_modes//,/ }; do
  [[ $m == interrupt || $m == poll ]] || bl_die "--sweep-modes: $m is not interrupt or poll"
done

out=${out:-$BL_ROOT/target/bench-results/idle-light-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
csv=$out/results.csv
rm -f "$csv"
run=$(mktemp -d /tmp/spinblk-idle.XXXXXX)
trap 'bl_cleanup; rm -rf "$run"' EXIT
bl_snapshot_bins "$out"
size_bytes=$(python3 -c "
import sys; s=sys.argv[1].strip().upper(); m={'K':10,'M':20,'G':30,'T':40}
print(int(s[:-1])<<m[s[-1]] if s[-1] in m else int(s))" "$size")
tcores=$(bl_expand_cpus "$target_cpu")

# Which targets can run.
have_poll_mode=0
if "$SPINBLK" --help 2>&1 | grep -q -- '--poll-mode'; then have_poll_mode=1; fi
order=()
skipped=()
for t in ${targets//,/ }; do
  case $t in
    spinblk-adaptive)
      if ((have_poll_mode)); then
        order+=("$t")
      else
        bl_log "spinblk-adaptive: skipped: this spinblk has no --poll-mode (issue 13 not merged yet): busy polling only"
        skipped+=("spinblk-adaptive: spinblk has no --poll-mode yet")
      fi
      ;;
    spinblk-busy) order+=("$t") ;;
    qsd)
      if bl_qsd_ok; then
        order+=("$t")
      else
        bl_log "qsd: skipped: qemu-storage-daemon not installed (Debian: apt-get install -y qemu-system-common)"
        skipped+=("qsd: qemu-storage-daemon not installed")
      fi
      ;;
    spdk)
      if [[ -z $spdk_dir ]]; then
        bl_log "spdk: skipped: set SPDK_DIR or --spdk DIR to include it"
        skipped+=("spdk: SPDK_DIR not set")
      elif spdk_check "$spdk_dir"; then
        order+=("$t")
      else
        skipped+=("spdk: $spdk_dir is not a built SPDK tree")
      fi
      ;;
    *) bl_die "--targets: unknown target $t" ;;
  esac
done
((${#order[@]})) || bl_die "no target to run"

{
  echo "idle-light.sh $(date -Is)"
  echo "machine: $(bl_sysinfo)"
  echo "targets: ${order[*]} (reversed every other round); null disk $size; target core $target_cpu, client core $client_cpu"
  echo "spinblk --poll-mode: $( ((have_poll_mode)) && echo supported || echo "not supported by this binary (busy only)")"
  echo "points: idle ${idle_s}s; light QD1 think ${think_us}us; continuous QD1/QD32; hog: $( ((hog)) && echo yes || echo no); sweep: $sweep_us ($sweep_modes)"
  echo "${rounds} round(s), ${runtime}s + ${ramp}s ramp per point"
  for s in "${skipped[@]}"; do echo "skipped: $s"; done
} | tee "$out/run-info.txt" >&2

if [[ " ${order[*]} " == *" spdk "* ]]; then
  need=$bdevperf_mem
  ((spdk_huge)) && need=$((need + spdk_mem))
  spdk_huge_setup "$run" "$need" || bl_die "hugepages: bdevperf needs them"
fi

hog_pid=
hog_on() {
  bl_start hog "$out/logs/hog.log" "$target_cpu" sh -c 'while :; do :; done'
  hog_pid=$BL_PID
  sleep 0.5
}
hog_off() {
  if [[ -n $hog_pid ]]; then bl_stop "$hog_pid" hog 5 >/dev/null 2>&1 || true; fi
  hog_pid=
}

# lb_point ROUND TARGET PID SOCK WORKLOAD MODE QD THINK [extra bench args...]
lb_point() {
  local round=$1 name=$2 pid=$3 sock=$4 wl=$5 mode=$6 qd=$7 think=$8 flags=() secs=$runtime
  shift 8
  [[ $mode == poll ]] && flags+=(--poll)
  ((think > 0)) && flags+=(--think-us "$think")
  if [[ $wl == idle ]]; then
    flags+=(--idle)
    secs=$idle_s
  fi
  bl_point --csv "$csv" --suite idle-light --client spinblk-bench --target "$name" --target-pid "$pid" \
    --target-cores "$tcores" --disk "null $size" --workload "$wl" --rw randread --bs 4096 --iodepth "$qd" \
    --queues 1 --reactors 1 --mode "$mode" --round "$round" --think-us "$think" \
    --runtime "$secs" --sample-from "$ramp" --sample-len "$secs" \
    --client-log "$out/logs/client-$name-r$round.log" -- \
    taskset -c "$client_cpu" "$BENCH" --socket "$sock" --rw randread --bs 4k --iodepth "$qd" \
    --cpus "$client_cpu" --runtime "$secs" --ramp "$ramp" "${flags[@]}" "$@" --json ||
    bl_log "warning: $name $wl $mode: no row recorded"
}

libblkio_session() {
  local round=$1 name=$2 sock=$run/$2.sock pid log=$out/logs/target-$2-r$1.log m t
  rm -f "$sock"
  case $name in
    spinblk-adaptive | spinblk-busy)
      local pm=()
      ((have_poll_mode)) && pm=(--poll-mode "${name#spinblk-}")
      bl_start "$name" "$log" "$target_cpu" "$SPINBLK" --socket "$sock" --null "$size" --cpus "$target_cpu" \
        --num-queues 2 "${pm[@]}"
      ;;
    qsd)
      bl_start qsd "$log" "$target_cpu" qemu-storage-daemon --object iothread,id=iot0 \
        --blockdev "driver=null-co,node-name=disk0,size=$size_bytes,read-zeroes=on" \
        --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on,num-queues=2,iothread=iot0"
      ;;
  esac
  pid=$BL_PID
  if ! bl_wait_socket "$sock" "$pid"; then
    bl_log "$name did not come up (see $log)"
    skipped+=("round $round $name: did not start")
    bl_stop "$pid" "$name" || true
    return 0
  fi
  lb_point "$round" "$name" "$pid" "$sock" idle interrupt 1 0
  for m in interrupt poll; do lb_point "$round" "$name" "$pid" "$sock" light "$m" 1 "$think_us"; done
  for m in interrupt poll; do lb_point "$round" "$name" "$pid" "$sock" qd1 "$m" 1 0; done
  lb_point "$round" "$name" "$pid" "$sock" qd32 interrupt 32 0
  if ((hog)); then
    hog_on
    lb_point "$round" "$name" "$pid" "$sock" hog-light interrupt 1 "$think_us"
    for m in interrupt poll; do lb_point "$round" "$name" "$pid" "$sock" hog-qd1 "$m" 1 0; done
    hog_off
  fi
  if [[ $sweep_us != none ]]; then
    for m in ${sweep_modes//,/ }; do
      for t in ${sweep_us//,/ }; do lb_point "$round" "$name" "$pid" "$sock" sweep "$m" 1 "$t"; done
    done
  fi
  bl_stop "$pid" "$name" || bl_log "warning: $name exited with status $?"
}

# bp_point ROUND TARGETPID WORKLOAD RPCSOCK BDEVPERF_LOG QD: one perform_tests
# (or, for idle, a wait) on an attached bdevperf.
bp_point() {
  local round=$1 pid=$2 wl=$3 bsock=$4 blog=$5 qd=$6
  if [[ $wl == idle ]]; then
    bl_point --csv "$csv" --suite idle-light --client bdevperf --parser idle --target spdk --target-pid "$pid" \
      --target-cores "$tcores" --disk "null $size" --workload idle --rw randread --bs 4096 --iodepth "$qd" \
      --queues 1 --reactors 1 --mode interrupt --round "$round" --think-us 0 \
      --runtime "$idle_s" --sample-from "$ramp" --sample-len "$idle_s" -- sleep $((idle_s + ramp)) ||
      bl_log "warning: spdk idle: no row recorded"
    return 0
  fi
  bl_point --csv "$csv" --suite idle-light --client bdevperf --parser bdevperf-json --target spdk \
    --target-pid "$pid" --target-cores "$tcores" --disk "null $size" --workload "$wl" --rw randread --bs 4096 \
    --iodepth "$qd" --queues 1 --reactors 1 --mode poll --round "$round" --think-us 0 \
    --runtime "$runtime" --sample-from 0.5 --sample-len "$((runtime - 1))" --pct-file "$blog" \
    --client-log "$out/logs/perform-spdk-r$round.log" -- \
    "${BL_TOOL[@]}" rpc --sock "$bsock" --timeout $((runtime + 60)) perform_tests ||
    bl_log "warning: spdk $wl: no row recorded"
}

spdk_session() {
  local round=$1 log=$out/logs/target-spdk-r$1.log vpid bpid blog
  mkdir -p "$run/vhost"
  rm -f "$run/vhost/vhost.0"
  if ! spdk_vhost_start "$log" "$target_cpu" "$run/vhost" "$run/vhost-rpc.sock" "$spdk_mem" "$spdk_huge" ||
    ! spdk_vhost_disk "$run/vhost-rpc.sock" null "$((size_bytes >> 20))" vhost.0 "$target_cpu" >>"$log" 2>&1 ||
    ! bl_wait_socket "$run/vhost/vhost.0" "$BL_PID"; then
    bl_log "spdk did not come up (see $log)"
    skipped+=("round $round spdk: did not start")
    bl_stop "$BL_PID" spdk || true
    return 0
  fi
  vpid=$BL_PID
  bdevperf_conf "$run/bdevperf.json" 2 256 "$run/vhost/vhost.0"
  # QD1: idle while attached, then continuous QD1, then QD1 next to the hog.
  blog=$out/logs/bdevperf-spdk-qd1-r$round.log
  if bdevperf_start "$blog" "$client_cpu" "$run/bdevperf.json" "$run/bdevperf.sock" "$bdevperf_mem" 1 randread 4096 "$runtime"; then
    bpid=$BL_PID
    bp_point "$round" "$vpid" idle "$run/bdevperf.sock" "$blog" 1
    bp_point "$round" "$vpid" qd1 "$run/bdevperf.sock" "$blog" 1
    if ((hog)); then
      hog_on
      bp_point "$round" "$vpid" hog-qd1 "$run/bdevperf.sock" "$blog" 1
      hog_off
    fi
    bl_stop "$bpid" bdevperf || true
  else
    bl_log "warning: bdevperf did not attach to spdk (see $blog)"
    bl_stop "$BL_PID" bdevperf || true
  fi
  blog=$out/logs/bdevperf-spdk-qd32-r$round.log
  if bdevperf_start "$blog" "$client_cpu" "$run/bdevperf.json" "$run/bdevperf.sock" "$bdevperf_mem" 32 randread 4096 "$runtime"; then
    bpid=$BL_PID
    bp_point "$round" "$vpid" qd32 "$run/bdevperf.sock" "$blog" 32
    bl_stop "$bpid" bdevperf || true
  else
    bl_log "warning: bdevperf did not attach to spdk (see $blog)"
    bl_stop "$BL_PID" bdevperf || true
  fi
  bl_stop "$vpid" spdk || bl_log "warning: spdk exited with status $?"
}

for ((round = 1; round <= rounds; round++)); do
  if ((round % 2)); then
    seq_t=("${order[@]}")
  else
    seq_t=()
    for ((k = ${#order[@]} - 1; k >= 0; k--)); do seq_t+=("${order[k]}"); done
  fi
  bl_log "== round $round of $rounds: ${seq_t[*]}"
  for t in "${seq_t[@]}"; do
    if [[ $t == spdk ]]; then spdk_session "$round"; else libblkio_session "$round" "$t"; fi
  done
done

echo
echo "== idle-light: null $size, target core $target_cpu, client core $client_cpu, ${rounds} round(s), ${runtime}s/point, light = QD1 + ${think_us}us pause =="
echo "machine: $(bl_sysinfo)"
for s in "${skipped[@]}"; do echo "skipped: $s"; done
if [[ -s $csv ]]; then
  "${BL_TOOL[@]}" idle-table --markdown "$out/table.md" "$csv" | tee "$out/table.txt"
  if ((plots)) && [[ $sweep_us != none ]]; then
    if command -v gnuplot >/dev/null 2>&1; then
      "${BL_TOOL[@]}" sweep-plot --title "null $size, target core $target_cpu" --outdir "$out" "$csv" ||
        bl_log "plot failed"
    else
      bl_log "plots skipped: gnuplot missing (apt-get install -y gnuplot-nox)"
    fi
  fi
  echo "results: $out (results.csv, table.txt, table.md, latency-vs-load.png, logs/)"
else
  echo "no results"
fi
