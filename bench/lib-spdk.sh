# shellcheck shell=bash
# SPDK helpers for the bench scripts: SPDK's vhost target and SPDK's bdevperf
# with its virtio-user initiator as a client. Source it after lib.sh; it
# defines functions and runs nothing.
#
# Nothing here builds SPDK: point SPDK_DIR at an SPDK tree built elsewhere
# (build/bin/vhost, build/examples/bdevperf). JSON-RPC calls go through
# `benchtool.py rpc` (standard library), so SPDK's Python package is not needed.
#
# Hugepages: bdevperf always needs them (its memory is what it shares with
# the vhost-user target; `-g` keeps it to one file per segment list, since
# vhost-user allows only 8 regions), SPDK's vhost target only in its
# hugepage variant. spdk_huge_setup reserves what is missing (when
# /proc/sys/vm/nr_hugepages is writable), mounts a private hugetlbfs, and the
# EXIT trap (bl_cleanup) gives both back.

SPDK_HUGE_DIR=
SPDK_HUGE_RESTORE=
SPDK_HUGE_MOUNTED=

# spdk_check DIR: sets SPDK_VHOST and SPDK_BDEVPERF; prints why and returns 1
# when DIR is not a built SPDK tree.
spdk_check() {
  local dir=$1
  SPDK_VHOST=$dir/build/bin/vhost
  SPDK_BDEVPERF=$dir/build/examples/bdevperf
  local f
  for f in "$SPDK_VHOST" "$SPDK_BDEVPERF"; do
    if [[ ! -x $f ]]; then
      bl_log "SPDK: $f missing (SPDK_DIR must be a built SPDK tree)"
      return 1
    fi
  done
}

# spdk_huge_free: free 2 MiB hugepages.
spdk_huge_free() { awk '/^HugePages_Free:/ {print $2}' /proc/meminfo; }

# spdk_huge_setup RUNDIR MIB: make sure MIB of 2 MiB hugepages are free
# (raising vm.nr_hugepages when needed and allowed; the old value comes back
# at exit) and that a hugetlbfs is mounted for them: a private mount under
# RUNDIR (unmounted at exit), or an existing 2 MiB hugetlbfs mount. Sets
# SPDK_HUGE_DIR. Returns 1 with a message when it cannot.
spdk_huge_setup() {
  local rundir=$1 mib=$2 need free total
  need=$(((mib + 1) / 2))
  free=$(spdk_huge_free)
  if ((free < need)); then
    total=$(cat /proc/sys/vm/nr_hugepages)
    if [[ -w /proc/sys/vm/nr_hugepages ]] && echo $((total + need - free)) >/proc/sys/vm/nr_hugepages 2>/dev/null; then
      [[ -n $SPDK_HUGE_RESTORE ]] || SPDK_HUGE_RESTORE=$total
      free=$(spdk_huge_free)
      bl_log "hugepages: vm.nr_hugepages $total -> $(cat /proc/sys/vm/nr_hugepages) (restored at exit); $free free"
    fi
    if ((free < need)); then
      bl_log "hugepages: $need free 2 MiB pages needed, $free free (vm.nr_hugepages not writable or memory short)"
      return 1
    fi
  fi
  if [[ -z $SPDK_HUGE_DIR ]]; then
    mkdir -p "$rundir/huge"
    if mount -t hugetlbfs -o pagesize=2M nodev "$rundir/huge" 2>/dev/null; then
      SPDK_HUGE_DIR=$rundir/huge
      SPDK_HUGE_MOUNTED=$rundir/huge
    else
      SPDK_HUGE_DIR=$(awk '$3 == "hugetlbfs" && ($4 ~ /pagesize=2M/ || $4 !~ /pagesize=/) {print $2; exit}' /proc/mounts)
      if [[ -z $SPDK_HUGE_DIR ]]; then
        bl_log "hugepages: cannot mount hugetlbfs and none is mounted"
        return 1
      fi
    fi
  fi
  return 0
}

# spdk_huge_cleanup: unmount our hugetlbfs, give back the pages we reserved.
spdk_huge_cleanup() {
  if [[ -n $SPDK_HUGE_MOUNTED ]]; then
    rm -f "$SPDK_HUGE_MOUNTED"/* 2>/dev/null
    umount "$SPDK_HUGE_MOUNTED" 2>/dev/null && rmdir "$SPDK_HUGE_MOUNTED" 2>/dev/null
    SPDK_HUGE_MOUNTED=
  fi
  if [[ -n $SPDK_HUGE_RESTORE ]]; then
    echo "$SPDK_HUGE_RESTORE" >/proc/sys/vm/nr_hugepages 2>/dev/null
    bl_log "hugepages: vm.nr_hugepages back to $(cat /proc/sys/vm/nr_hugepages)"
    SPDK_HUGE_RESTORE=
  fi
}
BL_CLEANUP_HOOKS+=(spdk_huge_cleanup)

# spdk_rpc SOCK METHOD [JSON_PARAMS] [benchtool rpc options...]: one call;
# the result (JSON) on stdout.
spdk_rpc() {
  local sock=$1 method=$2 params=${3:-}
  shift $(($# < 3 ? $# : 3))
  "${BL_TOOL[@]}" rpc --sock "$sock" "$@" "$method" ${params:+"$params"}
}

# spdk_mask CPULIST: "1" -> 0x2, "0,2" -> 0x5.
spdk_mask() {
  python3 -c "import sys; print(hex(sum(1 << int(c) for c in sys.argv[1].split(','))))" "$(bl_expand_cpus "$1")"
}

# spdk_vhost_start LOG CPUS SOCKDIR RPCSOCK MEM_MIB HUGE(0|1): SPDK's vhost
# app pinned to CPUS (reactor mask = CPUS), vhost sockets in SOCKDIR; with
# HUGE=0 it runs on MEM_MIB of ordinary memory (--no-huge -s MEM_MIB), with
# HUGE=1 on MEM_MIB of hugepages from SPDK_HUGE_DIR. Waits for its RPC
# server; sets BL_PID; returns 1 if it did not come up.
spdk_vhost_start() {
  local log=$1 cpus=$2 sockdir=$3 rpcsock=$4 mem=$5 huge=$6 mem_args
  if ((huge)); then
    mem_args=(-s "$mem" --huge-dir "$SPDK_HUGE_DIR")
  else
    mem_args=(--no-huge -s "$mem")
  fi
  rm -f "$rpcsock"
  # No core file: SPDK v26.05's vhost app sometimes crashes on SIGTERM
  # (SIGSEGV in DPDK's vhost-user fdset_event_dispatch thread) and would
  # leave a core of ~75 MiB in the current directory each time.
  bl_start spdk-vhost "$log" "$cpus" sh -c 'ulimit -c 0; exec "$@"' sh "$SPDK_VHOST" -m "$(spdk_mask "$cpus")" \
    -S "$sockdir" -r "$rpcsock" --no-pci "${mem_args[@]}"
  bl_wait_socket "$rpcsock" "$BL_PID" 60 || return 1
  spdk_rpc "$rpcsock" framework_wait_init "" --timeout 60 --retry 30 >/dev/null
}

# spdk_vhost_disk RPCSOCK KIND SIZE_MIB CTRLR CPUS [BDEV]: a null or malloc
# bdev of SIZE_MIB with 512-byte blocks named BDEV (default Null0 or Malloc0),
# and a vhost-blk controller CTRLR on it (socket SOCKDIR/CTRLR) with its
# queues on CPUS (SPDK serves a controller from one core of CPUS).
spdk_vhost_disk() {
  local rpcsock=$1 kind=$2 mib=$3 ctrlr=$4 cpus=$5 bdev=${6:-}
  case $kind in
    null)
      bdev=${bdev:-Null0}
      spdk_rpc "$rpcsock" bdev_null_create "{\"name\":\"$bdev\",\"num_blocks\":$((mib * 2048)),\"block_size\":512}" >/dev/null || return 1
      ;;
    malloc)
      bdev=${bdev:-Malloc0}
      spdk_rpc "$rpcsock" bdev_malloc_create "{\"name\":\"$bdev\",\"num_blocks\":$((mib * 2048)),\"block_size\":512}" --timeout 120 >/dev/null || return 1
      ;;
    *) bl_log "spdk_vhost_disk: unknown disk kind $kind"; return 1 ;;
  esac
  spdk_rpc "$rpcsock" vhost_create_blk_controller \
    "{\"ctrlr\":\"$ctrlr\",\"dev_name\":\"$bdev\",\"cpumask\":\"$(spdk_mask "$cpus")\"}" >/dev/null
}

# bdevperf_conf FILE VQ_COUNT VQ_SIZE SOCKET...: a JSON config that attaches
# the vhost-user-blk device at each SOCKET, in order, as bdevs VirtioBlk0,
# VirtioBlk1, ...
bdevperf_conf() {
  local file=$1 vq_count=$2 vq_size=$3 i=0 sock sep=""
  shift 3
  {
    echo '{"subsystems": [{"subsystem": "bdev", "config": ['
    for sock in "$@"; do
      printf '%s  {"method": "bdev_virtio_attach_controller",\n' "$sep"
      printf '   "params": {"name": "VirtioBlk%d", "trtype": "user", "traddr": "%s",\n' "$i" "$sock"
      printf '              "dev_type": "blk", "vq_count": %d, "vq_size": %d}}' "$vq_count" "$vq_size"
      sep=$',\n'
      i=$((i + 1))
    done
    echo ']}]}'
  } >"$file"
}

# bdevperf_args CONF CPUS MEM_MIB [EXTRA...]: the common bdevperf arguments
# (one reactor per CPU in CPUS, hugepage memory shared with the target), then
# EXTRA.
bdevperf_args() {
  BDEVPERF_ARGS=(--json "$1" -m "$(spdk_mask "$2")" --no-pci -s "$3" -g --huge-dir "$SPDK_HUGE_DIR" "${@:4}")
}

# bdevperf_oneshot LOG RPCSOCK CPUS CONF MEM_MIB QD RW IOSIZE SECS [EXTRA...]:
# one bdevperf run to its end (for fills); its text report lands in LOG.
# Returns its status.
bdevperf_oneshot() {
  local log=$1 rpcsock=$2 cpus=$3 conf=$4 mem=$5 qd=$6 rw=$7 bs=$8 secs=$9
  bdevperf_args "$conf" "$cpus" "$mem" "${@:10}"
  bl_log "bdevperf $rw bs=$bs qd=$qd ${secs}s on cpu(s) $cpus"
  rm -f "$rpcsock"
  timeout $((secs + 90)) taskset -c "$cpus" "$SPDK_BDEVPERF" "${BDEVPERF_ARGS[@]}" \
    -r "$rpcsock" -q "$qd" -o "$bs" -w "$rw" -t "$secs" </dev/null >"$log" 2>&1
}

# bdevperf_start LOG CPUS CONF RPCSOCK MEM_MIB QD RW IOSIZE SECS [NBDEVS
# [EXTRA...]]: bdevperf waiting for perform_tests (-z) on RPCSOCK, with the
# workload given on its command line (call perform_tests without parameters:
# one bdevperf per workload keeps every run's settings plain) and EXTRA after
# it (e.g. -C: every core drives every bdev). Waits until the NBDEVS bdevs of
# CONF (default 1: VirtioBlk0) exist; sets BL_PID; returns 1 if bdevperf did
# not get there. perform_tests may be called several times (the same workload
# each time).
bdevperf_start() {
  local log=$1 cpus=$2 conf=$3 rpcsock=$4 mem=$5 qd=$6 rw=$7 bs=$8 secs=$9 nbdevs=${10:-1} i
  bdevperf_args "$conf" "$cpus" "$mem" "${@:11}"
  rm -f "$rpcsock"
  # -l: a latency summary (percentiles) per run in LOG; line-buffered so it
  # is there when perform_tests returns (benchtool point --pct-file).
  bl_start bdevperf "$log" "$cpus" stdbuf -oL "$SPDK_BDEVPERF" "${BDEVPERF_ARGS[@]}" -r "$rpcsock" -z \
    -q "$qd" -o "$bs" -w "$rw" -t "$secs" -l
  bl_wait_socket "$rpcsock" "$BL_PID" 60 || return 1
  for ((i = 0; i < nbdevs; i++)); do
    spdk_rpc "$rpcsock" bdev_get_bdevs "{\"name\":\"VirtioBlk$i\",\"timeout\":20000}" --timeout 30 --retry 30 >/dev/null ||
      return 1
  done
}
