#!/usr/bin/env bash
# Side-by-side benchmark of vhost-user-blk targets on an equal disk.
#
#   bench/compare.sh [options]
#
# For each target: start it pinned to the target core(s) on a disk of the
# same kind and size, (for RAM disks) fill the disk once with a sequential
# write so no run pays first-touch page faults, run the workload matrix
# with the client pinned to other core(s), sample the target's CPU time from
# /proc/PID/stat during each measured window, stop it (SIGTERM; its stats
# table lands in its log). Then print one table (targets of a workload next
# to each other), write results.csv / table.md, and draw PNGs with gnuplot.
#
# Targets (missing ones are skipped with a message):
#   spinblk  target/release/spinblk --malloc SIZE (or --null SIZE with --disk null)
#   qsd      qemu-storage-daemon, vhost-user-blk export, one iothread:
#              --disk malloc: raw file in /dev/shm (RAM, page cache copies),
#                             aio=io_uring, cache.direct=off
#              --disk null:   null-co with read-zeroes=on
#   spdk     SPDK's vhost app (bdev_malloc_create / bdev_null_create) - only
#            with --spdk DIR or SPDK_DIR set to a built SPDK tree. libblkio
#            cannot drive SPDK's vhost target, so in this mode SPDK's bdevperf
#            with its virtio-user initiator is the client for BOTH spdk and
#            spinblk (rows marked [bdevperf]). Not run on the machine the
#            numbers in docs/benchmarks.md come from.
#
# Matrix (4 KiB): randread and randwrite at QD1 and QD32 on one queue; on
# 4 queues at QD32 when there are at least 3 cores (target core + >= 2 client
# cores; otherwise skipped with a message).
#
# Options (environment variables in brackets):
#   --targets LIST        spinblk,qsd,spdk (default: all three) [TARGETS]
#   --disk malloc|null    disk kind (default malloc) [DISK]
#   --size SIZE           disk size, K/M/G suffix (default 1G) [SIZE]
#   --target-cpu LIST     target core(s) (default 0) [TARGET_CPU]
#   --client-cpu N        client core for 1-queue runs (default 1) [CLIENT_CPU]
#   --mq-client-cpus LIST client cores for 4-queue runs (default: up to 4
#                         allowed cores that are not target cores) [MQ_CLIENT_CPUS]
#   --runtime S --ramp S  per point (default 5 and 1) [RUNTIME, RAMP]
#   --poll                client busy-polls completions (libblkio poll queues)
#                         instead of sleeping on the call eventfd [CLIENT_POLL=1]
#   --no-prefill          skip the initial sequential fill of RAM disks
#   --interleave          one target session per workload, alternating targets
#                         (spinblk, qsd, spinblk, qsd, ...) so that changes in
#                         the background load of a shared machine hit all
#                         targets alike; default: one session per target [INTERLEAVE=1]
#   --no-plots            no PNGs
#   --spdk DIR            SPDK tree (build/bin/vhost, build/examples/bdevperf,
#                         scripts/rpc.py) [SPDK_DIR]
#   --out DIR             results directory (default
#                         target/bench-results/compare-DATE) [OUT]
#
# Only one target runs at a time. Exit status 0 even when targets were
# skipped; 1 on setup errors (no binaries, bad options).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

targets=${TARGETS:-spinblk,qsd,spdk}
disk=${DISK:-malloc}
size=${SIZE:-1G}
target_cpu=${TARGET_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
mq_client_cpus=${MQ_CLIENT_CPUS:-}
runtime=${RUNTIME:-5}
ramp=${RAMP:-1}
poll=${CLIENT_POLL:-0}
prefill=1
plots=1
interleave=${INTERLEAVE:-0}
spdk_dir=${SPDK_DIR:-}
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --targets) targets=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --mq-client-cpus) mq_client_cpus=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --poll) poll=1; shift ;;
    --no-prefill) prefill=0; shift ;;
    --interleave) interleave=1; shift ;;
    --no-plots) plots=0; shift ;;
    --spdk) spdk_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $disk == malloc || $disk == null ]] || { echo "compare.sh: --disk must be malloc or null" >&2; exit 2; }
((runtime >= 2)) || { echo "compare.sh: --runtime must be at least 2" >&2; exit 2; }

out=${out:-$BL_ROOT/target/bench-results/compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
csv=$out/results.csv
rm -f "$csv"
run=$(mktemp -d /tmp/spinblk-compare.XXXXXX)
shm_img=/dev/shm/spinblk-compare-$$.img
trap 'bl_cleanup; rm -rf "$run"; rm -f "$shm_img"' EXIT

bl_snapshot_bins "$out"
size_bytes=$(python3 -c "
import sys; s=sys.argv[1].strip().upper(); m={'K':10,'M':20,'G':30,'T':40}
print(int(s[:-1])<<m[s[-1]] if s[-1] in m else int(s))" "$size")

# --- cores -----------------------------------------------------------------
read -r -a allowed <<<"$(bl_cpus)"
ncores=${#allowed[@]}
tcores=$(bl_expand_cpus "$target_cpu")
tcpus=${tcores//,/ }
if [[ -z $mq_client_cpus ]]; then
  free=()
  for c in "${allowed[@]}"; do [[ " $tcpus " == *" $c "* ]] || free+=("$c"); done
  mq_client_cpus=$(IFS=,; echo "${free[*]:0:4}")
  n_mq=$((${#free[@]} < 4 ? ${#free[@]} : 4))
else
  n_mq=$(tr ',' '\n' <<<"$mq_client_cpus" | grep -c .)
fi
if [[ " $tcpus " == *" $client_cpu "* ]]; then
  bl_log "warning: client core $client_cpu is also a target core: target and client will compete"
fi

mode=interrupt
mode_flag=()
if ((poll)); then mode=poll; mode_flag=(--poll); fi

# Workloads: label rw iodepth queues
workloads=(
  "4k-randread-qd1-1q randread 1 1"
  "4k-randread-qd32-1q randread 32 1"
  "4k-randwrite-qd1-1q randwrite 1 1"
  "4k-randwrite-qd32-1q randwrite 32 1"
)
mq_skip=""
if ((ncores >= 3 && n_mq >= 2)); then
  workloads+=("4k-randread-qd32-4q randread 32 4" "4k-randwrite-qd32-4q randwrite 32 4")
else
  mq_skip="4-queue QD32 points skipped: $ncores core(s) allowed; they need the target core plus at least 2 client cores (3 cores)"
fi

{
  echo "compare.sh $(date -Is)"
  echo "machine: $(bl_sysinfo)"
  echo "disk: $disk $size; target core(s): $target_cpu; client core: $client_cpu; 4-queue client cores: $([[ -n $mq_skip ]] && echo n/a || echo "$mq_client_cpus")"
  echo "client mode: $mode; runtime ${runtime}s, ramp ${ramp}s per point; $( ((interleave)) && echo "targets interleaved per workload" || echo "one session per target")"
  if [[ -n $mq_skip ]]; then echo "$mq_skip"; fi
} | tee "$out/run-info.txt" >&2


# run_matrix TARGET PID SOCKET DISKDESC WORKLOAD...
run_matrix() {
  local tname=$1 pid=$2 sock=$3 desc=$4 w label rw qd nq cpus
  shift 4
  for w in "$@"; do
    read -r label rw qd nq <<<"$w"
    if ((nq == 1)); then cpus=$client_cpu; else cpus=$mq_client_cpus; fi
    bl_point --csv "$csv" --suite compare --client spinblk-bench --target "$tname" \
      --target-pid "$pid" --target-cores "$tcores" --disk "$desc" --workload "$label" --rw "$rw" --bs 4096 \
      --iodepth "$qd" --queues "$nq" --reactors 1 --mode "$mode" \
      --runtime "$runtime" --sample-from "$ramp" --sample-len "$runtime" \
      --client-log "$out/logs/client-$tname.log" -- \
      taskset -c "$cpus" "$BENCH" --socket "$sock" --rw "$rw" --bs 4k --iodepth "$qd" \
      --queues "$nq" --cpus "$cpus" --runtime "$runtime" --ramp "$ramp" "${mode_flag[@]}" --json ||
      bl_log "warning: $tname $label: no row recorded"
  done
}

# prefill SOCKET NAME: one sequential 128 KiB write pass over the whole disk.
prefill_disk() {
  local sock=$1 name=$2 secs json wrote
  if ((!prefill)) || [[ $disk != malloc ]]; then return 0; fi
  secs=$(python3 -c "import sys; print(max(3, int(int(sys.argv[1]) / (400 << 20)) + 1))" "$size_bytes")
  json=$(taskset -c "$client_cpu" "$BENCH" --socket "$sock" --rw write --bs 128k --iodepth 8 \
    --cpus "$client_cpu" --runtime "$secs" --json 2>>"$out/logs/client-$name.log") || true
  wrote=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(int(r['write']['mib_s']*r['runtime_s']*1048576))" "$json" 2>/dev/null || echo 0)
  if ((wrote >= size_bytes)); then
    bl_log "$name: disk filled ($((wrote >> 20)) MiB written sequentially in ${secs}s)"
  else
    bl_log "warning: $name: prefill wrote only $((wrote >> 20)) of $((size_bytes >> 20)) MiB; later randreads partly hit unbacked pages"
  fi
}

skipped=()
sessions=0

# session TARGET WORKLOAD...: start TARGET on a fresh disk, fill it, run the
# workloads, stop it (its statistics table ends up in its log).
session() {
  local tname=$1 sock pid desc blockdev log
  shift
  sessions=$((sessions + 1))
  log=$out/logs/target-$tname-$sessions.log
  case $tname in
    spinblk)
      sock=$run/spinblk.sock
      desc="spinblk --$disk $size, 1 reactor"
      bl_start spinblk "$log" "$target_cpu" \
        "$SPINBLK" --socket "$sock" "--$disk" "$size" --cpus "$target_cpu" --num-queues 4
      ;;
    qsd)
      sock=$run/qsd.sock
      if [[ $disk == malloc ]]; then
        rm -f "$shm_img"
        truncate -s "$size_bytes" "$shm_img"
        blockdev="driver=file,node-name=disk0,filename=$shm_img,aio=${QSD_AIO:-io_uring},cache.direct=off"
        desc="qsd file on /dev/shm $size, aio=${QSD_AIO:-io_uring}, 1 iothread"
      else
        blockdev="driver=null-co,node-name=disk0,size=$size_bytes,read-zeroes=on"
        desc="qsd null-co $size read-zeroes=on, 1 iothread"
      fi
      bl_start qsd "$log" "$target_cpu" \
        qemu-storage-daemon --object iothread,id=iot0 --blockdev "$blockdev" \
        --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on,num-queues=4,iothread=iot0"
      ;;
  esac
  pid=$BL_PID
  if bl_wait_socket "$sock" "$pid"; then
    prefill_disk "$sock" "$tname"
    run_matrix "$tname" "$pid" "$sock" "$desc" "$@"
    bl_stop "$pid" "$tname" || bl_log "warning: $tname exited with status $?"
  else
    bl_log "$tname did not come up; see $log"
    skipped+=("$tname: did not start")
    bl_stop "$pid" "$tname" || true
  fi
  rm -f "$shm_img"
}

# --- (a) spinblk and (b) qemu-storage-daemon, client spinblk-bench (libblkio) ---
run_targets=()
if [[ ,$targets, == *,spinblk,* ]]; then run_targets+=(spinblk); fi
if [[ ,$targets, == *,qsd,* ]]; then
  if bl_qsd_ok; then
    run_targets+=(qsd)
  else
    bl_log "qsd: skipped: qemu-storage-daemon not installed (Debian: apt-get install -y qemu-system-common)"
    skipped+=("qsd: qemu-storage-daemon not installed")
  fi
fi
if ((interleave)); then
  # One target session per workload, alternating targets, so slow changes in
  # the machine's background load hit every target alike.
  for w in "${workloads[@]}"; do
    for t in "${run_targets[@]}"; do session "$t" "$w"; done
  done
else
  for t in "${run_targets[@]}"; do session "$t" "${workloads[@]}"; done
fi

# --- (c) SPDK vhost, with bdevperf (virtio-user) as the client for spdk and spinblk
# Everything SPDK-specific lives below. Requirements: a built SPDK tree,
# hugepages set up (sudo HUGEMEM=2048 $SPDK_DIR/scripts/setup.sh), root.
spdk_suite() {
  local vhost=$spdk_dir/build/bin/vhost rpc=$spdk_dir/scripts/rpc.py
  local bdevperf=$spdk_dir/build/examples/bdevperf
  local bdevperf_py=$spdk_dir/examples/bdev/bdevperf/bdevperf.py
  local f
  for f in "$vhost" "$bdevperf"; do
    [[ -x $f ]] || { bl_log "spdk: skipped: $f missing (build SPDK first)"; skipped+=("spdk: $f missing"); return 0; }
  done
  for f in "$rpc" "$bdevperf_py"; do
    [[ -f $f ]] || { bl_log "spdk: skipped: $f missing"; skipped+=("spdk: $f missing"); return 0; }
  done
  local size_mb=$((size_bytes >> 20))
  local tmask cmask
  tmask=$(python3 -c "import sys; print(hex(sum(1<<int(c) for c in sys.argv[1].split())))" "$tcpus")
  local sdir=$run/spdk
  mkdir -p "$sdir"

  # bdevperf_point TARGETNAME TARGETPID SOCKET DESC: whole matrix with bdevperf.
  bdevperf_point() {
    local tname=$1 tpid=$2 sock=$3 desc=$4 w label rw qd nq cpus vq conf bpid blog extra
    for w in prefill "${workloads[@]}"; do
      if [[ $w == prefill ]]; then
        if ((!prefill)) || [[ $disk != malloc ]]; then continue; fi
        label=prefill rw=write qd=8 nq=1
      else
        read -r label rw qd nq <<<"$w"
      fi
      if ((nq == 1)); then cpus=$client_cpu; else cpus=$mq_client_cpus; fi
      cmask=$(python3 -c "import sys; print(hex(sum(1<<int(c) for c in sys.argv[1].split(','))))" "$cpus")
      vq=$((2 * nq))   # vq_count >= 2x the client cores driving it
      conf=$sdir/bdevperf-$tname-$label.json
      cat >"$conf" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_virtio_attach_controller",
   "params": {"name": "VirtioBlk0", "trtype": "user", "traddr": "$sock",
              "dev_type": "blk", "vq_count": $vq, "vq_size": 512}}]}]}
EOF
      blog=$out/logs/bdevperf-$tname-$label.log
      extra=()
      ((nq > 1)) && extra=(-C)   # one job (thread, io channel, virtqueue) per client core
      if [[ $label == prefill ]]; then
        "$bdevperf" --json "$conf" -m "$cmask" -r "$sdir/bdevperf.sock" -q 8 -o 131072 -w write \
          -t "$(python3 -c "import sys; print(max(3, int(sys.argv[1]) // 400 + 1))" "$size_mb")" \
          >"$blog" 2>&1 || bl_log "warning: $tname: bdevperf prefill failed (see $blog)"
        continue
      fi
      rm -f "$sdir/bdevperf.sock"
      bl_start bdevperf "$blog" "$cpus" "$bdevperf" --json "$conf" -m "$cmask" -r "$sdir/bdevperf.sock" \
        -z -q "$qd" -o 4096 -w "$rw" -t "$runtime" -l "${extra[@]}"
      bpid=$BL_PID
      if ! bl_wait_socket "$sdir/bdevperf.sock" "$bpid" 60; then
        bl_log "warning: bdevperf did not start against $tname (see $blog)"
        bl_stop "$bpid" bdevperf || true
        continue
      fi
      # bdevperf has no ramp: sample 0.5 s into the run, for runtime-1 s.
      bl_point --csv "$csv" --suite compare --client bdevperf --parser bdevperf --result-file "$blog" \
        --target "$tname" --target-pid "$tpid" --target-cores "$tcores" --disk "$desc" --workload "$label" --rw "$rw" \
        --bs 4096 --iodepth "$qd" --queues "$nq" --reactors 1 --mode poll \
        --runtime "$runtime" --sample-from 0.5 --sample-len "$((runtime - 1))" \
        --client-log "$out/logs/bdevperf-rpc-$tname.log" -- \
        python3 "$bdevperf_py" -s "$sdir/bdevperf.sock" -t $((runtime + 60)) perform_tests ||
        bl_log "warning: $tname $label (bdevperf): no row recorded"
      bl_stop "$bpid" bdevperf || true
    done
  }

  # SPDK vhost target
  local rpcsock=$sdir/vhost-rpc.sock bdev_name
  local vargs=()
  read -r -a vargs <<<"${SPDK_VHOST_ARGS:-}"   # e.g. "-s 1024" (MiB of hugepage memory)
  bl_start spdk-vhost "$out/logs/target-spdk.log" "$target_cpu" \
    "$vhost" -S "$sdir" -m "$tmask" -r "$rpcsock" "${vargs[@]}"
  local vpid=$BL_PID
  if ! bl_wait_socket "$rpcsock" "$vpid" 60; then
    bl_log "spdk: vhost app did not start (see $out/logs/target-spdk.log; hugepages set up?)"
    skipped+=("spdk: vhost app did not start")
    bl_stop "$vpid" spdk-vhost || true
    return 0
  fi
  if [[ $disk == malloc ]]; then
    bdev_name=Malloc0
    python3 "$rpc" -s "$rpcsock" bdev_malloc_create -b Malloc0 "$size_mb" 512
  else
    bdev_name=Null0
    python3 "$rpc" -s "$rpcsock" bdev_null_create Null0 "$size_mb" 512
  fi
  python3 "$rpc" -s "$rpcsock" vhost_create_blk_controller --cpumask "$tmask" vhost.0 "$bdev_name"
  if bl_wait_socket "$sdir/vhost.0" "$vpid"; then
    bdevperf_point spdk "$vpid" "$sdir/vhost.0" "SPDK vhost $bdev_name ${size_mb} MiB, mask $tmask"
  else
    bl_log "spdk: vhost.0 socket did not appear"
  fi
  bl_stop "$vpid" spdk-vhost || true

  # spinblk with the same client
  local sock=$run/spinblk-bdevperf.sock
  bl_start spinblk "$out/logs/target-spinblk-bdevperf.log" "$target_cpu" \
    "$SPINBLK" --socket "$sock" "--$disk" "$size" --cpus "$target_cpu" --num-queues 8
  local spid=$BL_PID
  if bl_wait_socket "$sock" "$spid"; then
    bdevperf_point spinblk "$spid" "$sock" "spinblk --$disk $size, 1 reactor"
  fi
  bl_stop "$spid" spinblk || true
}

if [[ ,$targets, == *,spdk,* ]]; then
  if [[ -z $spdk_dir ]]; then
    bl_log "spdk: skipped: set SPDK_DIR or pass --spdk DIR (a built SPDK tree) to include it"
    skipped+=("spdk: SPDK_DIR not set")
  else
    spdk_suite
  fi
fi

# --- report -----------------------------------------------------------------------
echo
echo "== compare: 4 KiB, $disk disk $size, target core(s) $target_cpu, client core $client_cpu, client $mode mode, ${runtime}s/point (+${ramp}s ramp) =="
echo "machine: $(bl_sysinfo)"
if [[ -n $mq_skip ]]; then echo "note: $mq_skip"; fi
for s in "${skipped[@]}"; do echo "skipped: $s"; done
if [[ -s $csv ]]; then
  "${BL_TOOL[@]}" table --kind compare --markdown "$out/table.md" "$csv" | tee "$out/table.txt"
  if ((plots)); then
    if ! command -v gnuplot >/dev/null 2>&1; then
      bl_log "gnuplot missing: trying apt-get install -y gnuplot-nox"
      if ! { apt-get install -y gnuplot-nox >"$out/logs/apt-gnuplot.log" 2>&1 ||
        { apt-get update >>"$out/logs/apt-gnuplot.log" 2>&1 &&
          apt-get install -y gnuplot-nox >>"$out/logs/apt-gnuplot.log" 2>&1; }; }; then
        bl_log "plots skipped: could not install gnuplot-nox (see $out/logs/apt-gnuplot.log)"
      fi
    fi
    if command -v gnuplot >/dev/null 2>&1; then
      "${BL_TOOL[@]}" plot --title "4k $disk $size, client $mode" --outdir "$out" "$csv" ||
        bl_log "plots failed"
    fi
  fi
  echo "results: $out (results.csv, table.txt, table.md, *.png, logs/)"
else
  echo "no results"
fi
