# shellcheck shell=bash
# Shared shell functions for bench/compare.sh, bench/scaling.sh,
# bench/file-compare.sh and bench/rbd-compare.sh. Source it; it defines
# functions and a few variables and sets the EXIT trap described below.
#
# Targets are started pinned with taskset, their pid is remembered in
# BL_PIDS, and an EXIT trap stops whatever is still running (SIGTERM, then
# SIGKILL after a grace period), so an aborted run leaves no busy-poller
# spinning on a shared machine.

BL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BL_TOOL=(python3 "$BL_ROOT/bench/tools/benchtool.py")
BL_PIDS=()

bl_log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bl_die() { bl_log "error: $*"; exit 1; }

# bl_sysinfo: one line about the machine (cores, CPU model, kernel, load).
bl_sysinfo() { "${BL_TOOL[@]}" sysinfo; }

# bl_rand_workloads LIST: "randread-qd1,randwrite-qd32" -> one line "4k-randread-qd1
# randread 1" (label, rw, depth) per entry; an empty list, anything else, or a depth outside
# 1-256 is an error. Call it as out=$(bl_rand_workloads "$LIST") || exit, so an error stops
# the caller.
bl_rand_workloads() {
  local w qd
  [[ -n ${1//,/} ]] || bl_die "--workloads: none given"
  for w in ${1//,/ }; do
    case $w in
      randread-qd[1-9]* | randwrite-qd[1-9]*)
        qd=${w#*-qd}
        [[ $qd =~ ^[0-9]+$ ]] && ((qd <= 256)) || bl_die "--workloads: $w: the depth must be 1 to 256"
        echo "4k-$w ${w%-qd*} $qd" ;;
      *) bl_die "--workloads: unknown workload $w (randread-qdN or randwrite-qdN)" ;;
    esac
  done
}

# bl_cpus: the CPUs we may run on, space separated.
bl_cpus() { "${BL_TOOL[@]}" cpus; }

# bl_expand_cpus LIST: "0,2-3" -> "0,2,3".
bl_expand_cpus() {
  python3 -c "
import sys
out = []
for part in sys.argv[1].split(','):
    a, _, b = part.partition('-')
    out += range(int(a), int(b or a) + 1)
print(','.join(map(str, out)))" "$1"
}

# bl_snapshot_bins OUTDIR: copy spinblk, spinblk-bench and spinblk-linkprobe
# into OUTDIR/bin so a rebuild by someone else in the middle of a run cannot
# change the binaries under us; sets SPINBLK, BENCH and LINKPROBE. Honours
# SPINBLK_BIN / BENCH_BIN (spinblk-linkprobe is taken from beside BENCH_BIN).
bl_snapshot_bins() {
  local out=$1 src_t=${SPINBLK_BIN:-$BL_ROOT/target/release/spinblk}
  local src_b=${BENCH_BIN:-$BL_ROOT/target/release/spinblk-bench}
  local src_l
  src_l=$(dirname "$src_b")/spinblk-linkprobe
  [[ -x $src_t ]] || bl_die "$src_t not found: cargo build --release"
  [[ -x $src_b && -x $src_l ]] || bl_die "$src_b or $src_l not found: cargo build --release -p spinblk-bench"
  mkdir -p "$out/bin"
  cp "$src_t" "$out/bin/spinblk"
  cp "$src_b" "$out/bin/spinblk-bench"
  cp "$src_l" "$out/bin/spinblk-linkprobe"
  # shellcheck disable=SC2034  # used by the scripts that source this file
  SPINBLK=$out/bin/spinblk
  # shellcheck disable=SC2034
  BENCH=$out/bin/spinblk-bench
  # shellcheck disable=SC2034
  LINKPROBE=$out/bin/spinblk-linkprobe
  {
    echo "spinblk       $(sha256sum "$src_t" | cut -c1-16) $(stat -c %y "$src_t")"
    echo "spinblk-bench $(sha256sum "$src_b" | cut -c1-16) $(stat -c %y "$src_b")"
    echo "git HEAD      $(git -C "$BL_ROOT" rev-parse --short HEAD 2>/dev/null) ($(git -C "$BL_ROOT" status --porcelain 2>/dev/null | wc -l) files modified/untracked)"
  } >"$out/binaries.txt"
}

# bl_null_flags BIN DISK: sets BL_NULL_FLAGS to the options that make BIN's null disk leave
# read buffers alone, as SPDK's null bdev does (--null-no-read-zeroes), when DISK is null and
# BIN has the option (an older binary zero-fills); otherwise to nothing.
bl_null_flags() {
  BL_NULL_FLAGS=()
  if [[ $2 == null ]] && "$1" --help 2>/dev/null | grep -q -- --null-no-read-zeroes; then
    BL_NULL_FLAGS=(--null-no-read-zeroes)
  fi
}

# bl_start NAME LOG CPULIST CMD...: start CMD pinned to CPULIST with its
# output in LOG; sets BL_PID. stdin is /dev/null.
bl_start() {
  local name=$1 log=$2 cpus=$3
  shift 3
  bl_log "starting $name on cpu(s) $cpus: $*"
  taskset -c "$cpus" "$@" </dev/null >"$log" 2>&1 &
  BL_PID=$!
  BL_PIDS+=("$BL_PID")
}

# bl_wait_socket PATH PID [TIMEOUT_S]: wait for a unix socket to appear
# while PID lives.
bl_wait_socket() {
  local path=$1 pid=$2 t=${3:-20} i
  for ((i = 0; i < t * 20; i++)); do
    [[ -S $path ]] && { sleep 0.2; return 0; }
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# bl_stop PID NAME [GRACE_S]: SIGTERM (SIGINT is ignored by background jobs
# of a non-interactive shell until the program installs a handler, so TERM
# is the reliable one), wait, then SIGKILL. Returns the exit status.
bl_stop() {
  local pid=$1 name=$2 grace=${3:-20} i rc
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return $?; }
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    bl_log "warning: $name (pid $pid) still running ${grace}s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  rc=$?
  local keep=()
  for i in "${BL_PIDS[@]}"; do [[ $i == "$pid" ]] || keep+=("$i"); done
  BL_PIDS=("${keep[@]}")
  return $rc
}

# BL_CLEANUP_HOOKS: functions bl_cleanup calls after stopping the processes
# (e.g. to unmount a hugetlbfs and give back hugepages).
BL_CLEANUP_HOOKS=()

bl_cleanup() {
  local p
  for p in "${BL_PIDS[@]}"; do
    bl_stop "$p" "pid $p" 5 || true
  done
  for p in "${BL_CLEANUP_HOOKS[@]}"; do
    "$p" || true
  done
}
trap bl_cleanup EXIT
trap 'bl_log "interrupted"; exit 130' INT TERM

# bl_qsd_ok: qemu-storage-daemon is present (install: apt-get install -y
# qemu-system-common, which ships it on Debian 12).
bl_qsd_ok() { command -v qemu-storage-daemon >/dev/null 2>&1; }

# bl_point ARGS... -- CMD...: benchtool.py point.
bl_point() { "${BL_TOOL[@]}" point "$@"; }
