#!/usr/bin/env bash
# Side-by-side benchmark of vhost-user-blk targets on an equal disk, with one
# of two clients.
#
#   bench/compare.sh [options]                     # client: spinblk-bench (libblkio)
#   SPDK_DIR=DIR bench/compare.sh --client bdevperf  # client: SPDK's bdevperf
#
# --client libblkio (default): targets spinblk and qemu-storage-daemon. For
# each target: start it pinned to the target core(s) on a disk of the same
# kind and size, (for RAM disks) fill the disk once with a sequential write so
# no run pays first-touch page faults, run the workload matrix with the
# client pinned to other core(s), sample the target's CPU time from
# /proc/PID/stat during each measured window, stop it (SIGTERM; its stats
# table lands in its log). Then print one table (targets of a workload next
# to each other), write results.csv / table.md, and draw PNGs with gnuplot.
#   spinblk  target/release/spinblk --malloc SIZE (or --null SIZE with --disk null)
#   qsd      qemu-storage-daemon, vhost-user-blk export, one iothread:
#              --disk malloc: raw file in /dev/shm (RAM, page cache copies),
#                             aio=io_uring, cache.direct=off
#              --disk null:   null-co with read-zeroes=on
#   Matrix (4 KiB): randread and randwrite at QD1 and QD32 on one queue; on 4
#   queues at QD32 when there are at least 3 cores (target core + >= 2 client
#   cores; otherwise skipped with a message).
#
# --client bdevperf: SPDK's bdevperf with its virtio-user initiator
# (bdev_virtio_attach_controller, trtype user, dev_type blk) drives
#   spinblk    spinblk --null|--malloc SIZE --cpus TARGET_CPU --num-queues VQ_COUNT
#              (null: --null-no-read-zeroes, as SPDK's null bdev does not fill reads)
#   spdk       SPDK's vhost app on ordinary memory (--no-huge -s SPDK_MEM)
#   spdk-huge  SPDK's vhost app on hugepages (-s SPDK_MEM), how SPDK is meant to run
#   spinblk-before  (only when named in --targets) another spinblk binary,
#              SPINBLK_BEFORE_BIN (e.g. an older commit's build), same options:
#              before/after tables
# (bdev_null_create / bdev_malloc_create SIZE with 512-byte blocks,
# vhost_create_blk_controller on the target core). libblkio cannot drive
# SPDK's vhost target, so this is the client that compares the two.
# Every point is its own session: start the target, (malloc) fill the disk
# with a bdevperf sequential write pass (128 KiB, QD8; the bytes written are
# checked), start bdevperf -z, wait for its bdev, run perform_tests while the
# target's CPU time is sampled, stop both. Targets alternate within a round,
# spinblk in the middle so that it is next to each other target (round 1:
# spdk spinblk spdk-huge, round 2 the other way round, ...), for --rounds
# rounds (>= 4 recommended: this machine's speed changes within minutes).
# Matrix: for each --disk (default null,malloc): 4 KiB randread and randwrite
# at QD1 and QD32 (per bdevperf core).
# Several cores (--target-cpu LIST of N cores, --client-cpu LIST of M cores,
# on separate cores): spinblk serves ONE controller from all N cores (one
# reactor per core, queue i on reactor i mod N) and bdevperf drives its one
# bdev from every client core (-C: a job, a channel and a virtqueue per
# core); SPDK, which serves a controller from one core only, gets N
# controllers, one per target core, each on a disk of SIZE/N (the same RAM in
# all), and bdevperf spreads their N bdevs over its cores (a job each). The
# queue depth is per bdevperf job, so both get M x QD requests in flight when
# M = N.
# Prints per target best/median/worst IOPS and QD1 average latency, and per
# comparison the per-pair ratios (spinblk/other, same round), their median and
# the ratio of the best runs; then, from spinblk-linkprobe's cache-line round
# trip between the client's and the target's cores before and after each run,
# each target's undisturbed runs by band (sibling, near, far) and the ratios within each
# (this machine's speed changes with it, up to 3x). Writes results.csv,
# pairs.md, rounds.png and ratios.png. Needs SPDK_DIR (built elsewhere: build/bin/vhost,
# build/examples/bdevperf) and 2 MiB hugepages (reserved and given back by
# the script when vm.nr_hugepages is writable).
#
# Options (environment variables in brackets):
#   --client libblkio|bdevperf  (default libblkio) [CLIENT]
#   --targets LIST        libblkio: spinblk,qsd (default both); bdevperf:
#                         spinblk,spdk,spdk-huge (default all three; add
#                         spinblk-before with SPINBLK_BEFORE_BIN) [TARGETS]
#   --disk KIND           libblkio: malloc|null (default malloc); bdevperf: a
#                         list, default null,malloc [DISK]
#   --size SIZE           disk size, K/M/G suffix (default 1G) [SIZE]
#   --target-cpu LIST     target core(s) (default 1) [TARGET_CPU]
#   --client-cpu N        client core for 1-queue runs (default 0); with
#                         bdevperf a LIST: bdevperf's cores [CLIENT_CPU]
#   --mq-client-cpus LIST (libblkio) client cores for 4-queue runs (default: up
#                         to 4 allowed cores that are not target cores) [MQ_CLIENT_CPUS]
#   --runtime S --ramp S  per point (default 5 and 1; bdevperf has no ramp) [RUNTIME, RAMP]
#   --rounds N            (bdevperf) rounds of alternating targets (default 4) [ROUNDS]
#   --workloads LIST      (bdevperf) randread-qdN and randwrite-qdN, N from 1 to
#                         256 (default randread-qd1,randread-qd32,randwrite-qd1,
#                         randwrite-qd32) [WORKLOADS]
#   --vq-count N          (bdevperf) virtqueues per controller (default: 2 per
#                         bdevperf core that drives it: spinblk 2 x M, each
#                         SPDK controller 2 x ceil(M / N)) [VQ_COUNT]
#   --vq-size N           (bdevperf) virtqueue size (default 256) [VQ_SIZE]
#   --spdk-mem MIB        (bdevperf) memory of SPDK's vhost app (default 2048) [SPDK_MEM]
#   --bdevperf-mem MIB    (bdevperf) hugepage memory of bdevperf (default 1024) [BDEVPERF_MEM]
#   --poll                (libblkio) client busy-polls completions (libblkio
#                         poll queues) instead of sleeping on the call eventfd [CLIENT_POLL=1]
#   --no-prefill          skip the fill of RAM disks
#   --interleave          (libblkio) one target session per workload, alternating
#                         targets (spinblk, qsd, spinblk, qsd, ...) so that changes in
#                         the background load of a shared machine hit all
#                         targets alike; default: one session per target [INTERLEAVE=1]
#   --no-plots            no PNGs
#   --spdk DIR            built SPDK tree [SPDK_DIR]
#   --out DIR             results directory (default
#                         target/bench-results/compare-DATE) [OUT]
#
# Only one target runs at a time. Exit status 0 even when targets were
# skipped; 1 on setup errors (no binaries, bad options).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib-spdk.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-spdk.sh"

client=${CLIENT:-libblkio}
targets=${TARGETS:-}
disk=${DISK:-}
size=${SIZE:-1G}
target_cpu=${TARGET_CPU:-1}
client_cpu=${CLIENT_CPU:-0}
mq_client_cpus=${MQ_CLIENT_CPUS:-}
runtime=${RUNTIME:-5}
ramp=${RAMP:-1}
rounds=${ROUNDS:-4}
workload_sel=${WORKLOADS:-randread-qd1,randread-qd32,randwrite-qd1,randwrite-qd32}
vq_count=${VQ_COUNT:-}
vq_size=${VQ_SIZE:-256}
spdk_mem=${SPDK_MEM:-2048}
bdevperf_mem=${BDEVPERF_MEM:-1024}
poll=${CLIENT_POLL:-0}
prefill=1
plots=1
interleave=${INTERLEAVE:-0}
spdk_dir=${SPDK_DIR:-}
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --client) client=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --mq-client-cpus) mq_client_cpus=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --workloads) workload_sel=$2; shift 2 ;;
    --vq-count) vq_count=$2; shift 2 ;;
    --vq-size) vq_size=$2; shift 2 ;;
    --spdk-mem) spdk_mem=$2; shift 2 ;;
    --bdevperf-mem) bdevperf_mem=$2; shift 2 ;;
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
case $client in
  libblkio)
    targets=${targets:-spinblk,qsd}
    disk=${disk:-malloc}
    [[ $disk == malloc || $disk == null ]] || { echo "compare.sh: --disk must be malloc or null" >&2; exit 2; }
    if [[ ,$targets, == *,spdk* ]]; then
      echo "compare.sh: libblkio cannot drive SPDK's vhost target; use --client bdevperf for SPDK" >&2
      exit 2
    fi
    ;;
  bdevperf)
    targets=${targets:-spinblk,spdk,spdk-huge}
    disk=${disk:-null,malloc}
    for d in ${disk//,/ }; do
      [[ $d == malloc || $d == null ]] || { echo "compare.sh: --disk: $d is not malloc or null" >&2; exit 2; }
    done
    for t in ${targets//,/ }; do
      [[ $t == spinblk || $t == spdk || $t == spdk-huge || $t == spinblk-before ]] ||
        { echo "compare.sh: --targets: $t is not spinblk, spinblk-before, spdk or spdk-huge (bdevperf client)" >&2; exit 2; }
    done
    if [[ ,$targets, == *,spinblk-before,* ]] && ! [[ -x ${SPINBLK_BEFORE_BIN:-} ]]; then
      echo "compare.sh: --targets spinblk-before needs SPINBLK_BEFORE_BIN (an executable spinblk)" >&2
      exit 2
    fi
    if ! [[ $rounds =~ ^[0-9]+$ ]] || ((rounds < 1)); then
      echo "compare.sh: --rounds must be >= 1" >&2
      exit 2
    fi
    if [[ -n $vq_count ]]; then
      [[ $vq_count =~ ^[0-9]+$ ]] && ((vq_count >= 1)) || { echo "compare.sh: --vq-count must be >= 1" >&2; exit 2; }
      ((vq_count >= 2)) || echo "compare.sh: warning: --vq-count $vq_count: bdevperf sometimes fails to get a queue with fewer than 2" >&2
    fi
    [[ -n $spdk_dir ]] || { echo "compare.sh: --client bdevperf needs SPDK_DIR or --spdk DIR (a built SPDK tree)" >&2; exit 1; }
    ;;
  *) echo "compare.sh: --client must be libblkio or bdevperf" >&2; exit 2 ;;
esac
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

# --- --client bdevperf: spinblk vs SPDK's vhost, alternating, SPDK's bdevperf as client
if [[ $client == bdevperf ]]; then
  spdk_check "$spdk_dir" || bl_die "SPDK_DIR=$spdk_dir is not a built SPDK tree"
  size_mib=$((size_bytes >> 20))
  ((size_mib << 20 == size_bytes)) || bl_die "--size must be a whole number of MiB with --client bdevperf"
  read -r -a bp_disks <<<"${disk//,/ }"
  # Workloads: label rw qd
  bp_list=$(bl_rand_workloads "$workload_sel") || exit
  mapfile -t bp_workloads <<<"$bp_list"
  # Round order: spinblk in the middle, next to each SPDK variant; every
  # other round reversed.
  order=()
  for t in spdk spinblk-before spinblk spdk-huge; do
    [[ ,$targets, == *,$t,* ]] && order+=("$t")
  done
  huge_mib=$bdevperf_mem
  [[ ,$targets, == *,spdk-huge,* ]] && huge_mib=$((huge_mib + spdk_mem))
  tcores=$(bl_expand_cpus "$target_cpu")
  ccores=$(bl_expand_cpus "$client_cpu")
  read -r -a tcore_list <<<"${tcores//,/ }"
  read -r -a ccore_list <<<"${ccores//,/ }"
  nt=${#tcore_list[@]}
  nc=${#ccore_list[@]}
  # Virtqueues: bdevperf's virtio initiator takes a queue per core that drives a
  # bdev and sometimes fails to get one with fewer than 2 per such core.
  spinblk_vq=${vq_count:-$((2 * nc))}
  spdk_vq=${vq_count:-$((2 * ((nc + nt - 1) / nt)))}
  ((size_mib % nt == 0)) || bl_die "--size: $size_mib MiB does not split into $nt equal SPDK disks"
  spdk_disk_mib=$((size_mib / nt))
  {
    echo "compare.sh --client bdevperf $(date -Is)"
    echo "machine: $(bl_sysinfo)"
    echo "SPDK: $spdk_dir ($(git -C "$spdk_dir" describe --tags 2>/dev/null || echo "version unknown"))"
    echo "targets: ${order[*]} (round order; reversed every other round); disks: ${bp_disks[*]} $size"
    echo "target core(s): $tcores; bdevperf core(s): $ccores; vq_size $vq_size"
    echo "spinblk: one controller on $nt reactor(s), $spinblk_vq virtqueues$( ((nc > 1)) && echo ", bdevperf -C (every core drives it)")"
    echo "SPDK: $nt controller(s), one per target core, $spdk_vq virtqueues each, disk(s) of $spdk_disk_mib MiB"
    echo "SPDK vhost memory: ${spdk_mem} MiB (spdk: --no-huge, spdk-huge: hugepages); bdevperf: ${bdevperf_mem} MiB hugepages, -g"
    echo "${rounds} round(s), ${runtime}s per point; workloads: ${workload_sel}"
    echo "hugepages before: $(grep -E '^HugePages_(Total|Free)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
  } | tee "$out/run-info.txt" >&2
  spdk_huge_setup "$run" "$huge_mib" || bl_die "hugepages: bdevperf needs them (see above)"
  bl_log "hugepages: using $SPDK_HUGE_DIR; $(spdk_huge_free) free 2 MiB pages"
  # SPDK apps lock their cores; a bdevperf that shares one with SPDK's vhost
  # app must not, or it exits.
  bp_shared=()
  for c in "${ccore_list[@]}"; do
    if [[ " ${tcore_list[*]} " == *" $c "* ]]; then
      bl_log "warning: bdevperf core $c is also a target core: target and client will compete (a plumbing check, not a measurement)"
      bp_shared=(--disable-cpumask-locks)
    fi
  done
  ((nc == nt)) || bl_log "warning: $nc bdevperf core(s) for $nt target core(s): SPDK's $nt bdev(s) spread over $nc core(s)"
  fill_secs=$(python3 -c "import sys; print(max(2, int(sys.argv[1]) // 500 + 2))" "$size_mib")
  skipped=()
  npoints=0

  # bp_target_start NAME DISK LOG: start target NAME on a fresh disk; sets
  # tpid, tsocks (the controllers' sockets), tvq (virtqueues per controller)
  # and bp_extra (bdevperf flags); returns 1 if it did not come up.
  bp_target_start() {
    local name=$1 kind=$2 log=$3
    case $name in
      spinblk | spinblk-before)
        local bin=$SPINBLK
        [[ $name == spinblk-before ]] && bin=$SPINBLK_BEFORE_BIN
        tsocks=("$run/spinblk.sock")
        tvq=$spinblk_vq
        bp_extra=("${bp_shared[@]}")
        ((nc > 1)) && bp_extra+=(-C)
        rm -f "${tsocks[0]}"
        bl_null_flags "$bin" "$kind"
        # The RPC socket only answers thread_get_stats (busy time) around each run.
        trpc=$run/spinblk-rpc.sock
        bl_start "$name" "$log" "$tcores" "$bin" --socket "${tsocks[0]}" "--$kind" "$size" \
          "${BL_NULL_FLAGS[@]}" --cpus "$tcores" --num-queues "$tvq" -r "$trpc"
        tpid=$BL_PID
        bl_wait_socket "${tsocks[0]}" "$tpid"
        ;;
      spdk | spdk-huge)
        local huge=0
        [[ $name == spdk-huge ]] && huge=1
        mkdir -p "$run/vhost"
        rm -f "$run/vhost"/vhost.*
        spdk_vhost_start "$log" "$tcores" "$run/vhost" "$run/vhost-rpc.sock" "$spdk_mem" "$huge" ||
          { tpid=$BL_PID; return 1; }
        tpid=$BL_PID
        trpc=$run/vhost-rpc.sock
        tvq=$spdk_vq
        bp_extra=("${bp_shared[@]}")
        tsocks=()
        local i bdev
        [[ $kind == null ]] && bdev=Null || bdev=Malloc
        for ((i = 0; i < nt; i++)); do
          tsocks+=("$run/vhost/vhost.$i")
          spdk_vhost_disk "$trpc" "$kind" "$spdk_disk_mib" "vhost.$i" "${tcore_list[i]}" "$bdev$i" >>"$log" 2>&1 &&
            bl_wait_socket "${tsocks[i]}" "$tpid" || return 1
        done
        ;;
    esac
  }

  # bp_link_ns: spinblk-linkprobe's round trip (ns) between the client's core and the first
  # target core; run it only while neither polls.
  bp_link_ns() { "$LINKPROBE" --cpus "${ccore_list[0]},${tcore_list[0]}" 2>>"$out/logs/linkprobe.log"; }

  # bp_point ROUND DISK TARGET LABEL RW QD: one measured point in its own session.
  bp_point() {
    local round=$1 kind=$2 name=$3 label=$4 rw=$5 qd=$6 tag conf bsock bpid wrote desc fill_note=""
    tag=r$round-$kind-$label-$name
    npoints=$((npoints + 1))
    # The cache-line round trip between the client's core and the target's, while neither
    # polls (before the target starts, after it stops): the tables split runs by it.
    local link_before link_after
    link_before=$(bp_link_ns) || link_before=""
    if ! bp_target_start "$name" "$kind" "$out/logs/target-$tag.log"; then
      bl_log "$name did not come up (see $out/logs/target-$tag.log)"
      skipped+=("round $round $kind $label $name: target did not start")
      bl_stop "$tpid" "$name" || true
      return 0
    fi
    conf=$run/bdevperf.json
    bdevperf_conf "$conf" "$tvq" "$vq_size" "${tsocks[@]}"
    if [[ $kind == malloc ]] && ((prefill)); then
      # A sequential pass starts at offset 0: when one is too short (a slow
      # moment), the next one, twice as long, starts over.
      local secs=$fill_secs try
      for try in 1 2 3; do
        if bdevperf_oneshot "$out/logs/fill-$tag.log" "$run/bdevperf-fill.sock" "$ccores" "$conf" "$bdevperf_mem" 8 write 131072 "$secs" "${bp_shared[@]}"; then
          wrote=$("${BL_TOOL[@]}" bdevperf-fill --text --io-size 131072 --runtime "$secs" "$out/logs/fill-$tag.log" 2>/dev/null || echo 0)
        else
          wrote=0
        fi
        ((wrote < size_bytes)) || break
        bl_log "$name: fill pass $try wrote $((wrote >> 20)) of $size_mib MiB in ${secs}s (see $out/logs/fill-$tag.log)"
        secs=$((secs * 2))
      done
      if ((wrote < size_bytes)); then
        bl_log "warning: $name: the disk is not filled; randreads partly hit untouched memory"
        fill_note=" (NOT filled)"
      else
        bl_log "$name: disk filled ($((wrote >> 20)) MiB written sequentially in ${secs}s)"
        fill_note=" (filled)"
      fi
    fi
    bsock=$run/bdevperf.sock
    if ! bdevperf_start "$out/logs/bdevperf-$tag.log" "$ccores" "$conf" "$bsock" "$bdevperf_mem" \
      "$qd" "$rw" 4096 "$runtime" "${#tsocks[@]}" "${bp_extra[@]}"; then
      bl_log "warning: bdevperf did not attach to $name (see $out/logs/bdevperf-$tag.log)"
      skipped+=("round $round $kind $label $name: bdevperf did not attach")
      bl_stop "$BL_PID" bdevperf || true
      bl_stop "$tpid" "$name" || true
      return 0
    fi
    bpid=$BL_PID
    case $name in
      spinblk | spinblk-before) desc="$name --$kind $size, --cpus $tcores --num-queues $tvq" ;;
      spdk) desc="SPDK vhost --no-huge -s $spdk_mem, $nt x bdev_${kind}_create $spdk_disk_mib MiB" ;;
      spdk-huge) desc="SPDK vhost hugepages -s $spdk_mem, $nt x bdev_${kind}_create $spdk_disk_mib MiB" ;;
    esac
    desc+=$fill_note
    # bdevperf reports no window: its jobs start right after perform_tests
    # arrives; sample from 0.5 s in for runtime - 1 s.
    bl_point --csv "$csv" --suite bdevperf --client bdevperf --parser bdevperf-json \
      --target "$name" --target-pid "$tpid" --client-pid "$bpid" --target-cores "$tcores" \
      --target-rpc "$trpc" --disk "$kind" --workload "$label" \
      --rw "$rw" --bs 4096 --iodepth "$qd" --queues "$nc" --reactors "$nt" --mode poll --round "$round" \
      --note "$desc" --runtime "$runtime" --sample-from 0.5 --sample-len "$((runtime - 1))" \
      --link-ns-before "$link_before" \
      --client-log "$out/logs/perform-$tag.log" --pct-file "$out/logs/bdevperf-$tag.log" -- \
      "${BL_TOOL[@]}" rpc --sock "$bsock" --timeout $((runtime + 60)) perform_tests ||
      bl_log "warning: $tag: no row recorded"
    bl_stop "$bpid" bdevperf || bl_log "warning: bdevperf ($tag) exited with status $?"
    bl_stop "$tpid" "$name" || bl_log "warning: $name ($tag) exited with status $?"
    if link_after=$(bp_link_ns); then
      "${BL_TOOL[@]}" amend --csv "$csv" --target "$name" --disk "$kind" --workload "$label" \
        --round "$round" --set "link_ns_after=$link_after" 2>>"$out/logs/linkprobe.log" || true
    fi
    bl_log "$tag: core-to-core round trip ${link_before:-?} ns before, ${link_after:-?} ns after"
  }

  for ((round = 1; round <= rounds; round++)); do
    if ((round % 2)); then
      seq_t=("${order[@]}")
    else
      seq_t=()
      for ((k = ${#order[@]} - 1; k >= 0; k--)); do seq_t+=("${order[k]}"); done
    fi
    bl_log "== round $round of $rounds: ${seq_t[*]}"
    for kind in "${bp_disks[@]}"; do
      for w in "${bp_workloads[@]}"; do
        read -r label rw qd <<<"$w"
        for t in "${seq_t[@]}"; do bp_point "$round" "$kind" "$t" "$label" "$rw" "$qd"; done
      done
    done
  done

  echo
  echo "== compare (bdevperf client): 4 KiB, ${bp_disks[*]} $size, target core(s) $tcores, bdevperf core(s) $ccores, ${rounds} rounds, ${runtime}s/point =="
  echo "machine: $(bl_sysinfo)"
  for s in "${skipped[@]}"; do echo "skipped: $s"; done
  if [[ -s $csv ]]; then
    plot_args=()
    if ((plots)) && command -v gnuplot >/dev/null 2>&1; then
      plot_args=(--plot-dir "$out")
    elif ((plots)); then
      bl_log "plots skipped: gnuplot missing (apt-get install -y gnuplot-nox)"
    fi
    "${BL_TOOL[@]}" pairs --markdown "$out/pairs.md" "${plot_args[@]}" \
      --title "4k, $size, target core(s) $tcores" "$csv" | tee "$out/pairs.txt"
    echo "results: $out (results.csv, pairs.txt, pairs.md, rounds.png, ratios.png, logs/)"
  else
    echo "no results"
  fi
  exit 0
fi

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
