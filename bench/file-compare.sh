#!/usr/bin/env bash
# File-backed disk: spinblk --file vs qemu-storage-daemon, same file, same client.
#
#   bench/file-compare.sh [options]
#
# A file on the local disk (not tmpfs; default target/bench-file.img, 1 GiB,
# filled once with random data so every block is allocated and written:
# fallocate'd blocks are unwritten extents, which ext4/xfs read back as zeroes
# without touching the device) is served by
#   spinblk --file F                  (O_DIRECT through io_uring; write cache on)
#   qemu-storage-daemon --blockdev driver=file,filename=F,cache.direct=on,aio=io_uring
#                                     (vhost-user-blk export, one iothread; write cache on)
# in turn, pinned to the target core, and spinblk-bench drives 4 KiB randread
# and randwrite at QD1 and QD32 on one queue from the client core. Both
# targets bypass the page cache and neither makes a write durable before it
# completes (no FUA, no flush): the same work reaches the device.
#
# The table shows IOPS, p50/p99 latency and the target's CPU time per I/O
# (us of target CPU per request, from /proc/PID/stat).
#
# Options (environment variables in brackets):
#   --file PATH        backing file (default target/bench-file.img) [FILE]
#   --size SIZE        its size when it must be created (default 1G) [SIZE]
#   --target-cpu LIST  (default 0) [TARGET_CPU]    --client-cpu N (default 1) [CLIENT_CPU]
#   --runtime S --ramp S   per point (default 5 and 1) [RUNTIME, RAMP]
#   --poll             client busy-polls completions [CLIENT_POLL=1]
#   --targets LIST     spinblk,qsd (default both) [TARGETS]
#   --out DIR          results directory (default target/bench-results/file-DATE) [OUT]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

file=${FILE:-$BL_ROOT/target/bench-file.img}
size=${SIZE:-1G}
target_cpu=${TARGET_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
runtime=${RUNTIME:-5}
ramp=${RAMP:-1}
poll=${CLIENT_POLL:-0}
targets=${TARGETS:-spinblk,qsd}
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --file) file=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --poll) poll=1; shift ;;
    --targets) targets=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "file-compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
((runtime >= 2)) || { echo "file-compare.sh: --runtime must be at least 2" >&2; exit 2; }

out=${out:-$BL_ROOT/target/bench-results/file-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
csv=$out/results.csv
rm -f "$csv"
run=$(mktemp -d /tmp/spinblk-file.XXXXXX)
trap 'bl_cleanup; rm -rf "$run"' EXIT
bl_snapshot_bins "$out"

size_bytes=$(python3 -c "
import sys; s=sys.argv[1].strip().upper(); m={'K':10,'M':20,'G':30,'T':40}
print(int(s[:-1])<<m[s[-1]] if s[-1] in m else int(s))" "$size")

# --- the backing file ---------------------------------------------------------
mkdir -p "$(dirname "$file")"
fstype=$(findmnt -n -o FSTYPE -T "$(dirname "$file")" 2>/dev/null || stat -f -c %T "$(dirname "$file")")
case $fstype in
  tmpfs | ramfs) bl_die "$file is on $fstype: use a file on a real disk (--file)" ;;
esac
stamp=$file.filled
if [[ -f $file && -f $stamp && $(cat "$stamp") == "$(stat -c %s "$file")" ]]; then
  bl_log "reusing $file ($(($(stat -c %s "$file") >> 20)) MiB, filled earlier)"
else
  bl_log "writing $file: $((size_bytes >> 20)) MiB of random data with O_DIRECT (once)"
  rm -f "$stamp"
  head -c "$size_bytes" /dev/urandom |
    dd of="$file" bs=1M iflag=fullblock oflag=direct conv=fsync status=none
  stat -c %s "$file" >"$stamp"
fi
file_bytes=$(stat -c %s "$file")
device=$(df --output=source "$file" | tail -1)

mode=interrupt
mode_flag=()
if ((poll)); then mode=poll; mode_flag=(--poll); fi
tcores=$(bl_expand_cpus "$target_cpu")
workloads=(
  "4k-randread-qd1 randread 1"
  "4k-randread-qd32 randread 32"
  "4k-randwrite-qd1 randwrite 1"
  "4k-randwrite-qd32 randwrite 32"
)

{
  echo "file-compare.sh $(date -Is)"
  echo "machine: $(bl_sysinfo)"
  echo "file: $file ($((file_bytes >> 20)) MiB, $fstype on $device); target core(s) $target_cpu, client core $client_cpu; client $mode mode; ${runtime}s/point (+${ramp}s ramp)"
} | tee "$out/run-info.txt" >&2

run_matrix() {
  local tname=$1 pid=$2 sock=$3 desc=$4 w label rw qd
  for w in "${workloads[@]}"; do
    read -r label rw qd <<<"$w"
    bl_point --csv "$csv" --suite file --client spinblk-bench --target "$tname" \
      --target-pid "$pid" --target-cores "$tcores" --disk "$desc" --workload "$label" --rw "$rw" --bs 4096 \
      --iodepth "$qd" --queues 1 --reactors 1 --mode "$mode" \
      --runtime "$runtime" --sample-from "$ramp" --sample-len "$runtime" \
      --client-log "$out/logs/client-$tname.log" -- \
      taskset -c "$client_cpu" "$BENCH" --socket "$sock" --rw "$rw" --bs 4k --iodepth "$qd" \
      --queues 1 --cpus "$client_cpu" --runtime "$runtime" --ramp "$ramp" "${mode_flag[@]}" --json ||
      bl_log "warning: $tname $label: no row recorded"
  done
}

skipped=()
if [[ ,$targets, == *,spinblk,* ]]; then
  sock=$run/spinblk.sock
  bl_start spinblk "$out/logs/target-spinblk.log" "$target_cpu" \
    "$SPINBLK" --socket "$sock" --file "$file" --cpus "$target_cpu" --num-queues 1
  pid=$BL_PID
  if bl_wait_socket "$sock" "$pid"; then
    run_matrix spinblk "$pid" "$sock" "spinblk --file (O_DIRECT, io_uring)"
    bl_stop "$pid" spinblk || bl_log "warning: spinblk exited with status $?"
  else
    bl_log "spinblk did not come up; see $out/logs/target-spinblk.log"
    skipped+=("spinblk: did not start")
    bl_stop "$pid" spinblk || true
  fi
fi

if [[ ,$targets, == *,qsd,* ]]; then
  if ! bl_qsd_ok; then
    bl_log "qsd: skipped: qemu-storage-daemon not installed (Debian: apt-get install -y qemu-system-common)"
    skipped+=("qsd: not installed")
  else
    sock=$run/qsd.sock
    bl_start qsd "$out/logs/target-qsd.log" "$target_cpu" \
      qemu-storage-daemon --object iothread,id=iot0 \
      --blockdev "driver=file,node-name=disk0,filename=$file,cache.direct=on,aio=io_uring" \
      --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1,iothread=iot0"
    pid=$BL_PID
    if bl_wait_socket "$sock" "$pid"; then
      run_matrix qsd "$pid" "$sock" "qsd file cache.direct=on aio=io_uring, 1 iothread"
      bl_stop "$pid" qsd || bl_log "warning: qsd exited with status $?"
    else
      bl_log "qsd did not come up; see $out/logs/target-qsd.log"
      skipped+=("qsd: did not start")
      bl_stop "$pid" qsd || true
    fi
  fi
fi

echo
echo "== file compare: 4 KiB on $file ($((file_bytes >> 20)) MiB, $fstype on $device), 1 queue, target core(s) $target_cpu, client core $client_cpu, client $mode mode, ${runtime}s/point (+${ramp}s ramp) =="
echo "machine: $(bl_sysinfo)"
for s in "${skipped[@]}"; do echo "skipped: $s"; done
if [[ -s $csv ]]; then
  "${BL_TOOL[@]}" table --kind file --markdown "$out/table.md" "$csv" | tee "$out/table.txt"
  echo "tgt us CPU/IO = microseconds of target CPU time (utime+stime, all threads) per request"
  echo "results: $out"
else
  echo "no results"
fi
