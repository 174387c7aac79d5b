#!/usr/bin/env bash
# End-to-end test: boot a Debian kernel under QEMU (TCG) with a vhost-user-blk disk served by
# spinblk (or by qemu-storage-daemon, --target qsd, as a reference), check the disk's properties
# from inside the guest and run fio with data verification on it. With --restart, the target is
# killed and restarted under the running guest instead (vhost-user reconnect + inflight I/O
# tracking), and fio must not notice.
#
# Usage: scripts/vm-test.sh [options]
#   --size SIZE          disk size, bytes or with K/M/G/T suffix (binary)   [256M]
#   --block-size 512|4096  logical block size                               [512]
#   --readonly           export read-only: reads must work, writes must fail
#   --serial STR         serial the guest must see (spinblk only)           [spinblk-vmtest]
#   --num-queues N       virtqueues; the guest also gets N vCPUs            [2]
#   --cpus LIST          spinblk reactor cores                              [0]
#   --bdev malloc|null|file  backing bdev; null gets a read job only; file is a raw image of
#                        --size, created sparse in $VMTEST_IMG_DIR (on disk, so O_DIRECT works),
#                        whose content the host checks afterwards; rbd is an image of --size in
#                        a throwaway one-node Ceph cluster (scripts/ceph/cluster.sh, started and
#                        stopped here): after the guest, the target is stopped with SIGTERM (it
#                        must flush and close the image and exit 0) and the host checks the
#                        guest's block with `rbd export`          [malloc; file with --restart]
#   --no-write-cache     spinblk --no-write-cache: the guest must see a write-through disk
#   --target spinblk|qsd                                                    [spinblk]
#   --rpc                spinblk starts with only a JSON-RPC socket and no disk; the bdev and the
#                        controller (same geometry, serial and queues as the options ask) are
#                        created with SPDK's client (spdk-rpc from scripts/rpc/venv.sh) after it
#                        runs, before QEMU starts; the guest must see the same disk
#   --restart kill|term  restart test: once fio runs in the guest, SIGKILL (kill) or SIGTERM
#                        (term) the target --restarts times, --restart-interval seconds apart,
#                        each time while it is serving writes, and start it again at once with
#                        the same arguments; QEMU reconnects (reconnect=1). Needs a file bdev.
#                        Meanwhile the guest runs rounds of fio write + verify (crc32c, iodepth
#                        16, 512-64k blocks, one job per queue, fsync every 32 writes) over
#                        freshly zeroed regions, then a fresh verify-only pass. Passes if every
#                        restart is survived (the guest's I/O resumes on the new target and keeps
#                        going), fio is clean, the guest kernel logs no I/O error and no target
#                        counts one; the report shows what the guest logged around each restart.
#   --restarts N         restarts in one run                                 [5]
#   --resize             online resize test (implies --rpc): once the guest runs, the disk grows
#                        --resize-steps times by --resize-step each: bdev_null_resize (null),
#                        truncate + bdev_aio_rescan (file), spinblk_bdev_resize (malloc), all by
#                        SPDK's client. Per step the guest must see /sys/block/vda/size change
#                        within 2 s of the RPC returning (the host measures it: the time from the
#                        RPC's return until the guest's console says it saw the new size), then
#                        write + verify the new area with fio (a null disk: writes and reads
#                        that must succeed, zeroes read back); a file disk's image must hold the
#                        guest's last block. Reports the latency of each step.
#   --resize-steps N     resize steps in one run                             [2]
#   --resize-step SIZE   growth per step, whole MiB                          [64M]
#   --restart-interval SECS  seconds between restarts                        [5]
#   --target-log-level LEVEL  spinblk --log-level: info, debug or trace  [info; debug with --restart]
#   --timeout SECS       limit for the whole guest run                      [300]
#   --keep               keep the temp dir with the guest and target logs
#   --selftest-corrupt   harness self-test: the guest corrupts the disk between the write and
#                        the verify-only pass, so the test must FAIL
#   -h, --help
#
# Environment: SPINBLK_BIN (default target/release/spinblk, built with cargo if missing),
#   VMTEST_KERNEL (default: newest /boot/vmlinuz-*), VMTEST_FILL_PCT (share of the disk fio
#   writes, default 75), VMTEST_IMG_DIR (where --bdev file images go, default target/vmtest-img
#   in the repo; removed afterwards unless --keep), VMTEST_RESTART_JOB_SIZE (--restart: bytes
#   each of the guest's fio jobs writes per round, default 32M).
# Needs root (QEMU shares the host root into the guest for fio) and scripts/install-deps.sh.
# Exit status: 0 only if the guest reported VMTEST-RESULT PASS and nothing else went wrong.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

size_arg=256M
bs=512
readonly_=0
serial=spinblk-vmtest
queues=2
cpus=0
bdev=
no_wc=0
target=spinblk
rpc=0
restart=
restarts=5
restart_interval=5
resize=0
resize_steps=2
resize_step_arg=64M
target_log_level=
vm_timeout=300
keep=0
corrupt=0
fill_pct=${VMTEST_FILL_PCT:-75}
img_dir=${VMTEST_IMG_DIR:-$repo/target/vmtest-img}
restart_job_size_arg=${VMTEST_RESTART_JOB_SIZE:-32M}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "vm-test: error: $*" >&2; exit 2; }
need_arg() { [[ $# -ge 2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --size) need_arg "$@"; size_arg=$2; shift 2 ;;
        --block-size) need_arg "$@"; bs=$2; shift 2 ;;
        --readonly) readonly_=1; shift ;;
        --serial) need_arg "$@"; serial=$2; shift 2 ;;
        --num-queues) need_arg "$@"; queues=$2; shift 2 ;;
        --cpus) need_arg "$@"; cpus=$2; shift 2 ;;
        --bdev) need_arg "$@"; bdev=$2; shift 2 ;;
        --no-write-cache) no_wc=1; shift ;;
        --target) need_arg "$@"; target=$2; shift 2 ;;
        --rpc) rpc=1; shift ;;
        --restart) need_arg "$@"; restart=$2; shift 2 ;;
        --restarts) need_arg "$@"; restarts=$2; shift 2 ;;
        --restart-interval) need_arg "$@"; restart_interval=$2; shift 2 ;;
        --resize) resize=1; shift ;;
        --resize-steps) need_arg "$@"; resize_steps=$2; shift 2 ;;
        --resize-step) need_arg "$@"; resize_step_arg=$2; shift 2 ;;
        --target-log-level) need_arg "$@"; target_log_level=$2; shift 2 ;;
        --timeout) need_arg "$@"; vm_timeout=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --selftest-corrupt) corrupt=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

# --- validate ----------------------------------------------------------------------------------
# to_bytes SIZE: 4096, 64K, 256M, 1G, 1T (powers of 1024) -> bytes.
to_bytes() {
    local s=$1 n mult=1
    [[ $s =~ ^([0-9]+)([KkMmGgTt]?)(i?B)?$ ]] || die "bad size '$s'"
    n=${BASH_REMATCH[1]}
    case ${BASH_REMATCH[2]} in
        [Kk]) mult=1024 ;;
        [Mm]) mult=$((1024 * 1024)) ;;
        [Gg]) mult=$((1024 * 1024 * 1024)) ;;
        [Tt]) mult=$((1024 * 1024 * 1024 * 1024)) ;;
    esac
    echo $((10#$n * mult))
}
size=$(to_bytes "$size_arg")
[[ $bs == 512 || $bs == 4096 ]] || die "--block-size must be 512 or 4096"
((size >= 1024 * 1024)) || die "--size must be at least 1M"
((size % bs == 0)) || die "--size must be a multiple of the block size"
if ! [[ $queues =~ ^[0-9]+$ ]] || ((queues < 1 || queues > 64)); then die "--num-queues must be 1..64"; fi
[[ -n $bdev ]] || { if [[ -n $restart ]]; then bdev="file"; else bdev="malloc"; fi; }
[[ $bdev == malloc || $bdev == null || $bdev == file || $bdev == rbd ]] || die "--bdev must be malloc, null, file or rbd"
if [[ $bdev == rbd ]]; then
    [[ -z $restart ]] || die "--restart needs --bdev file"
    ((size % (1024 * 1024) == 0)) || die "--bdev rbd needs a --size in whole MiB"
fi
[[ $target == spinblk || $target == qsd ]] || die "--target must be spinblk or qsd"
[[ $no_wc == 0 || $target == spinblk ]] || die "--no-write-cache is a spinblk option"
[[ -z $restart || $restart == kill || $restart == term ]] || die "--restart must be kill or term"
if ! [[ $restarts =~ ^[0-9]+$ ]] || ((restarts < 1 || restarts > 50)); then die "--restarts must be 1..50"; fi
if ! [[ $restart_interval =~ ^[0-9]+$ ]] || ((restart_interval < 2 || restart_interval > 60)); then
    die "--restart-interval must be 2..60 seconds"
fi
if [[ -n $restart ]]; then
    [[ $target == spinblk ]] || die "--restart needs --target spinblk"
    [[ $bdev == file ]] || die "--restart needs --bdev file (a restarted malloc disk is empty)"
    [[ $readonly_ == 0 ]] || die "--restart needs a writable disk"
fi
resize_step=$(to_bytes "$resize_step_arg")
if ((resize)); then
    [[ $target == spinblk ]] || die "--resize needs --target spinblk"
    [[ -z $restart ]] || die "--resize and --restart do not go together"
    [[ $readonly_ == 0 ]] || die "--resize needs a writable disk"
    [[ $corrupt == 0 ]] || die "--resize and --selftest-corrupt do not go together"
    if ! [[ $resize_steps =~ ^[0-9]+$ ]] || ((resize_steps < 1 || resize_steps > 10)); then die "--resize-steps must be 1..10"; fi
    ((resize_step >= 1024 * 1024 && resize_step % (1024 * 1024) == 0)) || die "--resize-step must be a whole number of MiB"
    rpc=1
fi
if ((rpc)); then
    [[ $target == spinblk ]] || die "--rpc needs --target spinblk"
    [[ -z $restart ]] || die "--rpc and --restart do not go together"
    ((size % (1024 * 1024) == 0)) || die "--rpc needs a --size in whole MiB (rpc.py takes MB)"
fi
[[ -n $target_log_level ]] || { if [[ -n $restart ]]; then target_log_level=debug; else target_log_level=info; fi; }
[[ $target_log_level =~ ^(info|debug|trace)$ ]] || die "--target-log-level must be info, debug or trace"
restart_job_size=$(to_bytes "$restart_job_size_arg")
((restart_job_size >= 1024 * 1024)) || die "VMTEST_RESTART_JOB_SIZE must be at least 1M"
[[ $vm_timeout =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
if ! [[ $fill_pct =~ ^[0-9]+$ ]] || ((fill_pct < 1 || fill_pct > 100)); then die "VMTEST_FILL_PCT must be 1..100"; fi
[[ $serial != *$'\n'* ]] || die "--serial must be one line"
[[ $corrupt == 0 || ($readonly_ == 0 && $bdev != null && -z $restart) ]] || die "--selftest-corrupt needs a writable malloc or file disk (and no --restart)"
[[ $(id -u) == 0 ]] || die "must run as root (QEMU shares / with the guest; see scripts/install-deps.sh)"

for tool in qemu-system-x86_64 busybox fio cpio gzip; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
done
if [[ $target == qsd ]]; then
    command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found; run scripts/install-deps.sh"
fi
if [[ $bdev == rbd ]]; then
    for tool in ceph-mon ceph-osd ceph rbd; do
        command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
    done
fi

# Guest kernel: the newest /boot/vmlinuz-* (the Debian linux-image-amd64 kernel) unless given.
kernel=${VMTEST_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)}
[[ -n $kernel && -r $kernel ]] || die "no guest kernel /boot/vmlinuz-*; run scripts/install-deps.sh"
kver=${kernel##*/vmlinuz-}

# --- temp dir and cleanup ----------------------------------------------------------------------
tmp=$(mktemp -d /tmp/spinblk-vmtest.XXXXXX)
log_cap=$((64 * 1024 * 1024))
target_pid=
qemu_pid=
img=
ceph_dir=
# stop_pid PID: TERM, up to 5 s grace, then KILL; reaps it.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317
cleanup() {
    local rc=$? f
    trap - EXIT INT TERM
    # QEMU first (it is the vhost-user frontend), then the target.
    [[ -n $qemu_pid ]] && stop_pid "$qemu_pid"
    [[ -n $target_pid ]] && stop_pid "$target_pid"
    # The Ceph cluster last (the target flushes to it on the way out).
    [[ -n $ceph_dir ]] && bash "$repo/scripts/ceph/cluster.sh" stop "$ceph_dir"
    if ((keep)); then
        # A flooded target log is cut down to its first 64 MiB.
        for f in "$tmp"/target*.log; do
            [[ -f $f ]] && (($(stat -c %s "$f") > log_cap)) && truncate -s "$log_cap" "$f"
        done
        echo "vm-test: logs kept in $tmp${img:+, disk image $img}"
    else
        rm -rf "$tmp"
        [[ -n $img ]] && rm -f "$img"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "vm-test: interrupted" >&2; exit 130' INT
trap 'echo "vm-test: terminated" >&2; exit 143' TERM

sock=$tmp/vhost.sock
# --rpc: the controller vhost0 made by RPC listens in the -S directory.
((rpc)) && sock=$tmp/vhost0
guest_log=$tmp/guest.log
target_log=$tmp/target.log
: >"$guest_log"
: >"$target_log"
# Every target process's log, in start order (--restart starts several).
target_logs=("$target_log")

# What fio prints on a verify or I/O error ("crc32c: verify failed at file ...", "verify: bad
# magic header ...", "err= 5", "fio: pid=..., err=84/...").
fio_error_re='verify failed|bad magic|bad header|err= *[1-9]|fio: pid=.*err=|io_u error'
log=
# guest_brief: the guest log without CRs and without fio's per-job detail (latency tables etc.).
guest_brief() {
    tr -d '\r' | grep -avE '^(   |  (read|write|lat|clat|slat|bw|iops|cpu|IO depths|submit|complete|issued|latency|fsync|sync)|     \||fio-3|Starting|Disk stats|  vda:|$)' || true
}
what="target=$target bdev=$bdev size=$size bs=$bs readonly=$readonly_ queues=$queues"
((no_wc)) && what+=" no-write-cache"
[[ -n $restart ]] && what+=" restart=$restart x$restarts"
((resize)) && what+=" resize=${resize_steps}x+$resize_step"

# fail_loudly MSG: the one way out on failure, with the evidence.
fail_loudly() {
    local f
    echo
    echo "######################################################################"
    echo "### VM-TEST FAIL: $*"
    echo "### $what"
    echo "######################################################################"
    if grep -qE '^VMTEST-.* FAIL$' <<<"${log:-}"; then
        echo "--- failed guest checks ---"
        grep -E '^VMTEST-.* FAIL$' <<<"$log"
    fi
    if grep -qiE "$fio_error_re" <<<"${log:-}"; then
        echo "--- fio error reports ---"
        grep -iE "$fio_error_re" <<<"$log" | head -n 20 || true
    fi
    echo "--- guest log (last 60 lines of $guest_log, without fio's latency tables) ---"
    guest_brief <"$guest_log" | tail -n 60 || true
    if ((${#target_logs[@]} == 1)); then
        echo "--- target log (last 30 lines of $target_log) ---"
        tail -n 30 "$target_log"
    else
        for f in "${target_logs[@]}"; do
            echo "--- target log $f: $(wc -l <"$f") lines, $(grep -c ' ERROR ' "$f" || true) at ERROR level; first lines, distinct errors, last stats ---"
            head -n 12 "$f" | grep -v '^stats' | cut -c1-300 || true
            grep -a ' ERROR \| WARN ' "$f" | sed 's/^\[[^]]*\] *//' | awk '!seen[$0]++' | head -n 5 |
                sed 's/^/    (distinct) /' || true
            grep -a 'queue=' "$f" | tail -n 3 | cut -c1-300 || true
        done
    fi
    if [[ -s $tmp/qemu.out ]]; then
        echo "--- qemu stderr (last 20 lines) ---"
        tail -n 20 "$tmp/qemu.out"
    fi
    echo "--- end of logs ---"
    ((keep)) || echo "(rerun with --keep to keep the full logs)"
    exit 1
}

# --- initramfs ---------------------------------------------------------------------------------
# The cached base image (busybox, init, modules, fio jobs) plus a per-run archive with the
# expected values; the kernel unpacks concatenated archives one after the other.
base_initrd=$("$repo/scripts/vm/build-initramfs.sh" "$kver" "$repo/target/vm")
check_serial=0
write_cache=
if [[ $target == spinblk ]]; then
    check_serial=1
    if ((no_wc)); then write_cache=write-through; else write_cache=write-back; fi
fi
hostdata=0
[[ ($bdev == file || $bdev == rbd) && -z $restart ]] && hostdata=1
mode=normal
((resize)) && mode=resize
restart_secs=0
if [[ -n $restart ]]; then
    mode=restart
    # fio keeps going at least this long: one interval before each restart, one after the
    # last, and slack for the restarts themselves.
    restart_secs=$(((restarts + 1) * restart_interval + 3 * restarts))
fi
mkdir -p "$tmp/conf/vmtest"
cat >"$tmp/conf/vmtest/conf" <<CONF
VT_SIZE=$size
VT_BS=$bs
VT_RO=$readonly_
VT_QUEUES=$queues
VT_BDEV=$bdev
VT_CHECK_SERIAL=$check_serial
VT_WRITE_CACHE=$write_cache
VT_FILL_PCT=$fill_pct
VT_CORRUPT=$corrupt
VT_HOSTDATA=$hostdata
VT_MODE=$mode
VT_RESTART_SECS=$restart_secs
VT_RESTART_JOB_SIZE=$restart_job_size
VT_RESIZE_STEPS=$((resize ? resize_steps : 0))
VT_RESIZE_STEP=$resize_step
CONF
# The serial goes in its own file, byte for byte, so no quoting is involved.
printf '%s' "$serial" >"$tmp/conf/vmtest/serial"
(cd "$tmp/conf" && find . | cpio -o -H newc --quiet) | gzip -n >"$tmp/conf.cpio.gz"
cat "$base_initrd" "$tmp/conf.cpio.gz" >"$tmp/initrd"

# --- disk image (--bdev file) ------------------------------------------------------------------
# Sparse, on the real disk (not tmpfs: O_DIRECT), all zeroes to start with.
if [[ $bdev == file ]]; then
    mkdir -p "$img_dir" || die "cannot create $img_dir"
    img=$(mktemp "$img_dir/disk.XXXXXX.img")
    truncate -s "$size" "$img"
fi

# --- Ceph cluster and image (--bdev rbd) -------------------------------------------------------
# No mgr: RBD I/O does not need one (saves ~150 MiB).
if [[ $bdev == rbd ]]; then
    t_ceph=$SECONDS
    ceph_dir=$(CEPH_MGR=0 bash "$repo/scripts/ceph/cluster.sh" start 2>"$tmp/ceph-start.log" | tail -n1) ||
        { ceph_dir=; fail_loudly "cannot start a Ceph cluster: $(tail -n 3 "$tmp/ceph-start.log")"; }
    ceph_conf=$ceph_dir/ceph.conf
    rbd_image=vmtest
    bash "$repo/scripts/ceph/cluster.sh" image "$ceph_dir" "$rbd_image" $((size / 1048576)) ||
        fail_loudly "cannot create the rbd image"
    echo "vm-test: ceph: $(tail -n1 "$tmp/ceph-start.log") (+ image: $((SECONDS - t_ceph)) s)"
fi

# --- target ------------------------------------------------------------------------------------
if [[ $target == spinblk ]]; then
    bin=${SPINBLK_BIN:-$repo/target/release/spinblk}
    if [[ ! -x $bin ]]; then
        [[ -z ${SPINBLK_BIN:-} ]] || die "SPINBLK_BIN=$bin is not executable"
        echo "vm-test: building spinblk (cargo build --release -p spinblk)"
        (cd "$repo" && cargo build --release -p spinblk) || fail_loudly "cargo build --release -p spinblk failed"
    fi
    # Every restart must run the same build, even if target/release is rebuilt meanwhile.
    if [[ -n $restart ]]; then
        cp "$bin" "$tmp/spinblk"
        bin=$tmp/spinblk
    fi
    if ((rpc)); then
        # Only the RPC socket; the disk comes by RPC below, as vhost0 under -S (= $sock).
        rpc_sock=$tmp/rpc.sock
        [[ $sock == "$tmp/vhost0" ]] || die "internal: --rpc needs the socket at $tmp/vhost0"
        target_cmd=("$bin" -r "$rpc_sock" -S "$tmp" --cpus "$cpus" --log-level "$target_log_level")
    else
        # The contract with the target: sizes are passed in bytes.
        target_cmd=("$bin" --socket "$sock")
        case $bdev in
            malloc) target_cmd+=(--malloc "$size") ;;
            null) target_cmd+=(--null "$size") ;;
            file) target_cmd+=(--file "$img") ;;
            rbd) target_cmd+=(--rbd "rbd/$rbd_image" --rbd-conf "$ceph_conf") ;;
        esac
        target_cmd+=(--block-size "$bs")
        ((readonly_)) && target_cmd+=(--readonly)
        ((no_wc)) && target_cmd+=(--no-write-cache)
        target_cmd+=(--serial "$serial" --num-queues "$queues" --cpus "$cpus" --log-level "$target_log_level")
    fi
else
    # qemu-storage-daemon as the reference target (no serial; GET_ID gives a fixed string).
    case $bdev in
        malloc)
            truncate -s "$size" "$tmp/disk.img"
            blockdev="driver=file,node-name=f,filename=$tmp/disk.img"
            ;;
        file) blockdev="driver=file,node-name=f,filename=$img,cache.direct=on" ;;
        null) blockdev="driver=null-co,node-name=f,size=$size,read-zeroes=on" ;;
        rbd) blockdev="driver=rbd,node-name=f,pool=rbd,image=$rbd_image,conf=$ceph_conf,user=admin" ;;
    esac
    ((readonly_)) && blockdev+=",read-only=on"
    if ((readonly_)); then writable=off; else writable=on; fi
    target_cmd=(qemu-storage-daemon --blockdev "$blockdev"
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$sock,writable=$writable,num-queues=$queues,logical-block-size=$bs")
fi
echo "vm-test: target: ${target_cmd[*]}"
"${target_cmd[@]}" >"$target_log" 2>&1 &
target_pid=$!

# --rpc: once the RPC socket is there, make the disk with SPDK's own client. spinblk's own keys
# (serial, num_queues) go through the client library, the rest through spdk-rpc as a user would.
if ((rpc)); then
    for ((i = 0; i < 100; i++)); do
        [[ -S $rpc_sock ]] && break
        kill -0 "$target_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -S $rpc_sock ]] || fail_loudly "target did not create $rpc_sock"
    [[ ! -e $sock ]] || fail_loudly "$sock exists before any controller was created"
    spdk_rpc=$(bash "$repo/scripts/rpc/venv.sh") || fail_loudly "cannot install SPDK's client (scripts/rpc/venv.sh)"
    R=("$spdk_rpc" -s "$rpc_sock")
    blocks=$((size / bs))
    case $bdev in
        malloc) "${R[@]}" bdev_malloc_create -b d0 "$((size / 1048576))" "$bs" ;;
        null) "${R[@]}" bdev_null_create d0 "$((size / 1048576))" "$bs" ;;
        file) "${R[@]}" bdev_aio_create "$img" d0 "$bs" ;;
        rbd) "${R[@]}" bdev_rbd_register_cluster c0 --config-file "$ceph_conf" &&
            "${R[@]}" bdev_rbd_create -b d0 -c c0 rbd "$rbd_image" "$bs" ;;
    esac >>"$tmp/rpc.log" 2>&1 || fail_loudly "bdev creation by RPC failed: $(cat "$tmp/rpc.log")"
    ((no_wc)) && { "$(dirname "$spdk_rpc")/python" - "$rpc_sock" >>"$tmp/rpc.log" 2>&1 <<'PY' || fail_loudly "spinblk_bdev_set_options failed: $(cat "$tmp/rpc.log")"
import sys
from spdk.rpc.client import JSONRPCClient
JSONRPCClient(sys.argv[1]).call("spinblk_bdev_set_options", {"name": "d0", "write_cache": False})
PY
    }
    "$(dirname "$spdk_rpc")/python" - "$rpc_sock" "$serial" "$queues" "$readonly_" "$cpus" >>"$tmp/rpc.log" 2>&1 <<'PY' || fail_loudly "vhost_create_blk_controller by RPC failed: $(cat "$tmp/rpc.log")"
import sys
from spdk.rpc.client import JSONRPCClient
sock, serial, queues, ro, cpus = sys.argv[1:]
c = JSONRPCClient(sock)
c.call("vhost_create_blk_controller", {"ctrlr": "vhost0", "dev_name": "d0", "readonly": ro == "1",
       "cpumask": "[" + cpus + "]", "serial": serial, "num_queues": int(queues)})
print(c.call("vhost_get_controllers", {"name": "vhost0"}))
PY
    got=$("${R[@]}" bdev_get_bdevs -b d0) || fail_loudly "bdev_get_bdevs failed"
    grep -q "\"num_blocks\": $blocks," <<<"$got" || fail_loudly "bdev d0 is not $blocks blocks: $got"
    echo "vm-test: bdev d0 and controller vhost0 created by RPC ($(wc -l <"$tmp/rpc.log") lines in rpc.log)"
fi

# Ready when the socket exists (10 s at most); give up early if the target dies.
for ((i = 0; i < 100; i++)); do
    [[ -S $sock ]] && break
    kill -0 "$target_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -S $sock ]]; then
    if ! kill -0 "$target_pid" 2>/dev/null; then
        wait "$target_pid" && trc=0 || trc=$?
        target_pid=
        fail_loudly "target exited (status $trc) before creating $sock"
    fi
    fail_loudly "target did not create $sock within 10 s"
fi

# --- guest -------------------------------------------------------------------------------------
# -nodefaults: no NIC/VGA/etc.; the serial console goes to the log, nothing to stdio.
# Guest RAM is a shared memfd so the vhost-user backend can map it.
# With --restart, QEMU reconnects to the socket by itself, every second, when the target goes.
chardev="socket,id=vub,path=$sock"
[[ -n $restart ]] && chardev+=",reconnect=1"
qemu_cmd=(qemu-system-x86_64
    -machine "q35,accel=tcg" -cpu max -smp "$queues" -m 1G
    -object "memory-backend-memfd,id=mem,size=1G,share=on" -numa "node,memdev=mem"
    -nodefaults -nographic -no-reboot -monitor none -serial "file:$guest_log"
    -kernel "$kernel" -initrd "$tmp/initrd"
    -append "console=ttyS0 panic=-1 quiet loglevel=4"
    -chardev "$chardev"
    -device "vhost-user-blk-pci,chardev=vub,num-queues=$queues"
    -fsdev "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap"
    -device "virtio-9p-pci,fsdev=r,mount_tag=hostroot")
echo "vm-test: guest: kernel $kver, $queues vCPU(s), timeout ${vm_timeout}s"
start=$SECONDS
"${qemu_cmd[@]}" >"$tmp/qemu.out" 2>&1 &
qemu_pid=$!
target_died=0
timed_out=0
aborted=0
problems=()
# check_hopeless: states not worth waiting out the timeout for; records the problem and fails.
# A target log over 64 MiB (a log flood fills the disk in minutes), or the guest kernel saying
# a request virtqueue is broken (virtio_ring's BAD_RING: "virtio_blk virtio0: req.0:id 11 is
# not a head!"; the queue is dead from then on and the guest's I/O on it hangs for good).
check_hopeless() {
    local sz line
    ((aborted)) && return 1
    sz=$(stat -c %s "$target_log" 2>/dev/null || echo 0)
    if ((sz > log_cap)); then
        problems+=("the target log $target_log grew past 64 MiB (a log flood); run stopped")
        aborted=1
        return 1
    fi
    line=$(grep -m1 -aE 'virtio_blk virtio[0-9]+: req\.[0-9]+:' "$guest_log" | tr -d '\r' || true)
    if [[ -n $line ]]; then
        problems+=("the guest kernel marked a virtqueue broken: '$line'; run stopped")
        aborted=1
        return 1
    fi
    return 0
}

# --- restarts (--restart) ----------------------------------------------------------------------
# now_ms: wall clock in milliseconds.
now_ms() {
    local t=${EPOCHREALTIME//[.,]/}
    echo $((10#$t / 1000))
}
# secs MS: "1.234" from milliseconds.
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
# stat_field NAME LINE: the value of NAME=... in a spinblk stats line.
stat_field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$2"; }
# target_stats: SIGUSR1 the running target (spinblk prints its statistics table) and print
# "read_ops write_ops io_errors" of the controller's total row; fails if no table came.
target_stats() {
    local n0 n i line
    n0=$(grep -c 'queue=total' "$target_log" || true)
    kill -USR1 "$target_pid" 2>/dev/null || return 1
    for ((i = 0; i < 40; i++)); do
        n=$(grep -c 'queue=total' "$target_log" || true)
        ((n > n0)) && break
        sleep 0.05
    done
    ((n > n0)) || return 1
    line=$(grep 'queue=total' "$target_log" | tail -n1 || true)
    echo "$(stat_field read_ops "$line") $(stat_field write_ops "$line") $(stat_field io_errors "$line")"
}
# start_target N: start restart number N (log target.N.log); ready once it prints its
# "serving" line (the socket is bound then; a killed target's stale socket file is still
# there, so the file's existence says nothing). Sets target_pid and target_log.
start_target() {
    local i
    target_log=$tmp/target.$1.log
    target_logs+=("$target_log")
    "${target_cmd[@]}" >"$target_log" 2>&1 &
    target_pid=$!
    for ((i = 0; i < 200; i++)); do
        if grep -q ': serving ' "$target_log"; then
            target_ready_ms=$(now_ms)
            # spinblk installs its SIGUSR1 handler just after that line (target_stats would
            # kill it before); QEMU takes up to a second to reconnect anyway.
            sleep 0.2
            return 0
        fi
        kill -0 "$target_pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
# guest_alive: QEMU runs, the overall timeout has not passed, nothing hopeless happened; else
# records why not.
guest_alive() {
    check_hopeless || return 1
    if ! kill -0 "$qemu_pid" 2>/dev/null; then
        problems+=("QEMU exited during the restarts")
        return 1
    fi
    if ((SECONDS - start >= vm_timeout)); then
        timed_out=1
        return 1
    fi
    return 0
}
kills_done=0
kills_survived=0
target_ready_ms=0
kill_lines=()   # one report line per restart
kill_windows=() # "first last" guest log line numbers around each restart
kill_resumed=() # 1 if the guest's I/O resumed on the new target
io_errors_seen=0
# A restart counts as survived once the guest's I/O resumed on the new target AND kept going:
# writes were flowing again at the next restart, or (after the last one) fio finished its
# rounds; a virtqueue the guest declares broken, or a hang, stops the run before that.
confirm_survival() {
    local k=$1
    ((k >= 1)) || return 0
    [[ ${kill_resumed[k - 1]:-0} == 1 ]] || return 0
    kills_survived=$((kills_survived + 1))
    kill_lines[k - 1]+="; survived"
}
restart_loop() {
    local sig k t0 due prev_resume=0 a b wa wb flowing i rc gl0 t_kill t_exit t_ready
    local t_resume resumed st exit_ok r line
    if [[ $restart == kill ]]; then sig=KILL; else sig=TERM; fi
    # Wait for fio to start in the guest.
    until grep -q '^VMTEST-RESTART-FIO-START' "$guest_log"; do
        guest_alive || return 0
        if ! kill -0 "$target_pid" 2>/dev/null; then
            target_died=1
            return 0
        fi
        if grep -q '^VMTEST-RESULT' "$guest_log"; then
            problems+=("the guest finished without starting the restart fio job")
            return 0
        fi
        sleep 0.2
    done
    t0=$(now_ms)
    echo "vm-test: fio started in the guest $((SECONDS - start))s after QEMU; $restarts x SIG$sig, every ${restart_interval}s"
    for ((k = 1; k <= restarts; k++)); do
        due=$((t0 + k * restart_interval * 1000))
        ((due >= prev_resume + 2000)) || due=$((prev_resume + 2000))
        while (($(now_ms) < due)); do
            guest_alive || return 0
            if ! kill -0 "$target_pid" 2>/dev/null; then
                target_died=1
                return 0
            fi
            sleep 0.1
        done
        if grep -q '^VMTEST-RESTART-FIO-DONE' "$guest_log"; then
            problems+=("fio finished in the guest before restart $k (only $((k - 1)) of $restarts done; raise VMTEST_RESTART_JOB_SIZE?)")
            return 0
        fi
        # Kill only while the target is serving writes: two snapshots 0.3 s apart (5 s at most).
        flowing=
        for ((i = 0; i < 12; i++)); do
            guest_alive || return 0
            a=$(target_stats) || a=
            sleep 0.3
            b=$(target_stats) || b=
            read -r _ wa _ <<<"${a:-0 0 0}"
            read -r _ wb _ <<<"${b:-0 0 0}"
            if ((wb > wa)); then
                flowing="+$((wb - wa)) writes in the 0.3 s before"
                break
            fi
        done
        if [[ -n $flowing ]]; then
            confirm_survival $((k - 1))
        else
            problems+=("restart $k: the target served no writes in the 5 s before it (killed anyway)")
        fi
        read -r _ _ st <<<"${b:-0 0 0}"
        io_errors_seen=$((io_errors_seen + st))
        gl0=$(wc -l <"$guest_log")
        t_kill=$(now_ms)
        exit_ok=1
        # One group with stderr silenced: bash would otherwise report "Killed" for the job.
        {
            kill -"$sig" "$target_pid" || true
            # A SIGTERMed target completes its in-flight requests first: 15 s at most.
            for ((i = 0; i < 150; i++)); do
                kill -0 "$target_pid" || break
                sleep 0.1
            done
            if kill -0 "$target_pid"; then
                problems+=("restart $k: the target did not exit within 15 s of SIG$sig; killed")
                kill -KILL "$target_pid" || true
                exit_ok=0
            fi
            wait "$target_pid" && rc=0 || rc=$?
        } 2>/dev/null
        t_exit=$(now_ms)
        kills_done=$k
        if [[ $sig == KILL && $rc != 137 ]]; then
            problems+=("restart $k: the SIGKILLed target exited with status $rc, not 137")
            exit_ok=0
        elif [[ $sig == TERM ]]; then
            if [[ $rc != 0 ]]; then
                problems+=("restart $k: the target exited with status $rc after SIGTERM, not 0")
                exit_ok=0
            elif ! grep -q 'shut down cleanly' "$target_log"; then
                problems+=("restart $k: no 'shut down cleanly' from the SIGTERMed target")
                exit_ok=0
            fi
            # Its final table has the totals of its whole life.
            st=$(stat_field io_errors "$(grep 'queue=total' "$target_log" | tail -n1 || true)")
            io_errors_seen=$((io_errors_seen + ${st:-0}))
        fi
        line="restart $k: SIG$sig at fio+$(secs $((t_kill - t0)))s (${flowing:-no writes seen}); exit status $rc after $(secs $((t_exit - t_kill)))s"
        if ! start_target "$k"; then
            kill_lines+=("$line; the new target did not come up")
            kill_windows+=("$gl0 $(wc -l <"$guest_log")")
            kill_resumed+=(0)
            problems+=("restart $k: the new target did not come up (see $target_log)")
            target_died=1
            return 0
        fi
        t_ready=$target_ready_ms
        line+="; new target ready $(secs $((t_ready - t_exit)))s later"
        # Resumed: QEMU reconnected and the guest's I/O flows through the new target (30 s at
        # most; QEMU retries the socket every second).
        resumed=0
        for ((i = 0; i < 60; i++)); do
            guest_alive || break
            kill -0 "$target_pid" 2>/dev/null || break
            r=$(target_stats) || r="0 0 0"
            read -r a b _ <<<"$r"
            if ((a + b > 0)); then
                resumed=1
                break
            fi
            sleep 0.5
        done
        t_resume=$(now_ms)
        prev_resume=$t_resume
        kill_windows+=("$gl0 $(wc -l <"$guest_log")")
        if ((resumed && exit_ok)); then
            kill_lines+=("$line; guest I/O resumed $(secs $((t_resume - t_kill)))s after the kill")
            kill_resumed+=(1)
        else
            if ((resumed)); then
                kill_lines+=("$line; guest I/O resumed")
            elif ((aborted)); then
                kill_lines+=("$line; run stopped before the guest's I/O was seen on the new target")
            else
                kill_lines+=("$line; guest I/O did NOT resume")
            fi
            kill_resumed+=(0)
        fi
        ((aborted || timed_out)) && return 0
        if ! kill -0 "$qemu_pid" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$target_pid" 2>/dev/null; then
            target_died=1
            return 0
        fi
        if ((!resumed)); then
            problems+=("restart $k: the guest's I/O did not resume on the new target within 30 s; run stopped")
            aborted=1
            return 0
        fi
    done
}

# --- online resize (--resize) ------------------------------------------------------------------
resize_lines=()
resize_done=0
# resize_rpc NEW_BYTES: grow the disk d0 to NEW_BYTES by SPDK's client, as the bdev kind wants.
resize_rpc() {
    local mib=$(($1 / 1048576))
    case $bdev in
        null) "${R[@]}" bdev_null_resize d0 "$mib" ;;
        file) truncate -s "$1" "$img" && "${R[@]}" bdev_aio_rescan d0 ;;
        malloc)
            "$(dirname "$spdk_rpc")/python" - "$rpc_sock" "$mib" <<'PY'
import sys
from spdk.rpc.client import JSONRPCClient
JSONRPCClient(sys.argv[1]).call("spinblk_bdev_resize", {"name": "d0", "new_size": int(sys.argv[2])})
PY
            ;;
    esac
}
resize_loop() {
    local k new t0 t_rpc t_seen i seen line
    for ((k = 1; k <= resize_steps; k++)); do
        # The guest says when it watches the size for step k.
        until grep -q "^VMTEST-RESIZE-READY step=$k " "$guest_log"; do
            guest_alive || return 0
            if ! kill -0 "$target_pid" 2>/dev/null; then
                target_died=1
                return 0
            fi
            if grep -q '^VMTEST-RESULT' "$guest_log"; then
                problems+=("the guest finished before resize step $k")
                return 0
            fi
            sleep 0.1
        done
        new=$((size + k * resize_step))
        t0=$(now_ms)
        if ! resize_rpc "$new" >>"$tmp/rpc.log" 2>&1; then
            problems+=("resize step $k: the RPC failed: $(tail -n 5 "$tmp/rpc.log" | tr '\n' ' ')")
            return 0
        fi
        t_rpc=$(now_ms)
        # Until the guest's console says it saw the new size: polled every 10 ms, 30 s at most.
        seen=0
        for ((i = 0; i < 3000; i++)); do
            if grep -q "^VMTEST-RESIZE-SEEN step=$k " "$guest_log"; then
                seen=1
                break
            fi
            ((i % 50)) || guest_alive || break
            sleep 0.01
        done
        t_seen=$(now_ms)
        resize_done=$k
        line="resize step $k: $bdev d0 -> $new bytes; the RPC (SPDK's client, started at t0) returned at t0+$(secs $((t_rpc - t0)))s"
        if ((seen)); then
            line+="; the guest saw the new size at t0+$(secs $((t_seen - t0)))s, $(secs $((t_seen - t_rpc)))s after the RPC returned"
            line+=" ($(grep -m1 "^VMTEST-RESIZE-SEEN step=$k " "$guest_log" | tr -d '\r' | cut -d' ' -f3-))"
            # Within 2 s of asking: a slow RPC (a controller stuck telling its frontend) counts.
            if ((t_seen - t0 > 2000)); then
                problems+=("resize step $k: the guest saw the new size only $(secs $((t_seen - t0)))s after the resize was asked for (limit 2 s; the RPC itself took $(secs $((t_rpc - t0)))s)")
            fi
        else
            line+="; the guest did NOT see the new size within 30 s"
            problems+=("resize step $k: the guest did not see the new size")
        fi
        echo "vm-test: $line"
        resize_lines+=("$line")
        ((seen)) || return 0
    done
}

# QEMU runs in the background and this loop watches it: the INT/TERM traps run promptly (the
# sleeps are short), the run is stopped after --timeout seconds, and it is stopped at once if
# the target dies (the guest's I/O would otherwise hang until the timeout).
[[ -n $restart ]] && restart_loop
((resize)) && resize_loop
while ((!target_died && !timed_out)) && kill -0 "$qemu_pid" 2>/dev/null; do
    check_hopeless || break
    if ! kill -0 "$target_pid" 2>/dev/null; then
        target_died=1
        break
    fi
    if ((SECONDS - start >= vm_timeout)); then
        timed_out=1
        break
    fi
    sleep 0.5
done
if ((target_died || aborted)); then
    sleep 2 # let the guest log what it can
    stop_pid "$qemu_pid"
    # A target that floods its log or serves a broken queue goes too (it prints its totals).
    if ((aborted)) && [[ -n $target_pid ]]; then
        stop_pid "$target_pid"
        target_pid=
    fi
elif ((timed_out)); then
    stop_pid "$qemu_pid"
fi
wait "$qemu_pid" && qrc=0 || qrc=$?
qemu_pid=
elapsed=$((SECONDS - start))

# --- report ------------------------------------------------------------------------------------
log=$(tr -d '\r' <"$guest_log")
echo "vm-test: guest ran ${elapsed}s (qemu exit status $qrc)"
echo "--- guest checks ---"
grep -E '^VMTEST-(BOOTED|CHECK|INFO|HOSTDATA|RESTART)' <<<"$log" || true
echo "--- fio ---"
# Per fio run: its markers, job status lines, bandwidth lines, and anything error-like.
awk '
    /^VMTEST-FIO-BEGIN/ { infio = 1; print; next }
    /multiple writers may overwrite/ { next }  # warning for numjobs>1, but the regions are disjoint
    /^VMTEST-FIO-END/ { infio = 0; print; next }
    /^VMTEST-/ { next }
    infio && (/err=|IOPS=|Run status|READ:|WRITE:|verify|[Ee]rror|fail|bad /) { print }
' <<<"$log"
if grep -q '^VMTEST-DMESG-BEGIN' <<<"$log"; then
    echo "--- guest kernel log (dmesg | grep -iE 'blk|vda|I/O error|virtio') ---"
    sed -n '/^VMTEST-DMESG-BEGIN/,/^VMTEST-DMESG-END/{/^VMTEST-DMESG/d;p}' <<<"$log"
fi

if [[ -n $restart ]]; then
    [[ $restart == kill ]] && sig=KILL || sig=TERM
    # The last restart is survived if fio then finished its rounds (their verdict is below).
    if ((kills_done > 0 && !aborted)) && grep -q '^VMTEST-RESTART-FIO-DONE' <<<"$log"; then
        confirm_survival "$kills_done"
    fi
    echo "--- restarts (SIG$sig), each with what the guest printed from just before it until its I/O resumed ---"
    echo "    (VMTEST-MON: guest uptime, requests in flight reads/writes, completed reads/writes)"
    for ((k = 0; k < ${#kill_lines[@]}; k++)); do
        echo "${kill_lines[k]}"
        read -r gl0 gl1 <<<"${kill_windows[k]}"
        sed -n "$((gl0 > 2 ? gl0 - 2 : 1)),$((gl1 + 1))p" "$guest_log" | guest_brief |
            sed 's/^/    guest| /' | head -n 20 || true
    done
    # The last target's own error count: ask it, or read the totals it printed on exit.
    if [[ -n $target_pid ]] && kill -0 "$target_pid" 2>/dev/null && r=$(target_stats); then
        read -r _ _ st <<<"$r"
    else
        st=$(stat_field io_errors "$(grep -a 'queue=total' "$target_log" | tail -n1 || true)")
    fi
    io_errors_seen=$((io_errors_seen + ${st:-0}))
    rounds=$(grep -c '^VMTEST-FIO-END restart-round-.* ok$' <<<"$log" || true)
    echo "vm-test: restarts: $kills_done of $restarts SIG$sig done, $kills_survived survived; fio rounds passed: $rounds; I/O errors the targets counted: $io_errors_seen"
    ((kills_done == restarts)) || problems+=("only $kills_done of $restarts restarts were done")
    ((kills_survived == kills_done)) || problems+=("the guest survived $kills_survived of $kills_done restarts")
    ((io_errors_seen == 0)) || problems+=("the targets counted $io_errors_seen I/O errors")
    grep -q '^VMTEST-RESTART-FIO-DONE' <<<"$log" || problems+=("the restart fio job did not finish")
fi

if ((resize)); then
    echo "--- online resize (latency: from the RPC's return until the guest's console reported the new size; the guest polls every 10 ms) ---"
    for line in "${resize_lines[@]}"; do
        echo "$line"
    done
    ((resize_done == resize_steps)) || problems+=("only $resize_done of $resize_steps resize steps were done")
    # Every controller must have told its frontend (the target logs each failure).
    if grep -a 'could not be told' "$target_log" >/dev/null; then
        problems+=("the target could not tell the frontend about a resize: $(grep -a -m1 'could not be told' "$target_log" | sed 's/^\[[^]]*\] *//')")
    fi
    n=$(grep -c '^VMTEST-FIO-END resize-.* ok$' <<<"$log" || true)
    ((n == resize_steps)) || problems+=("$n of $resize_steps fio runs on the new area passed")
    grep -E '^(VMTEST-RESIZE|.*new size)' <<<"$log" | head -n 20 || true
fi
if ((aborted)); then
    : # the reason is already in problems
elif ((target_died)); then
    problems+=("target died while the guest was running; QEMU was stopped")
elif ((timed_out)); then
    problems+=("guest timed out after ${vm_timeout}s")
elif ((qrc != 0)); then
    problems+=("qemu exited with status $qrc")
fi
if [[ -s $tmp/qemu.out ]]; then
    if [[ -n $restart ]]; then
        # QEMU 7.2 says this for every restart: GET_VRING_BASE cannot reach a dead backend.
        echo "--- qemu stderr (expected per restart: 'Failed to set msg fds.', 'vhost VQ N ring restore failed: -22') ---"
        sort "$tmp/qemu.out" | uniq -c | sort -rn | head -n 20
    else
        echo "--- qemu stderr ---"
        head -n 40 "$tmp/qemu.out"
    fi
fi
grep -q '^VMTEST-RESULT PASS$' <<<"$log" || problems+=("guest did not report VMTEST-RESULT PASS")
if grep -qE '^VMTEST-(CHECK|FIO-END) .* FAIL$' <<<"$log"; then
    problems+=("guest reported failed checks")
fi
# Independent of the guest's verdict: any fio verify/I-O error report fails the test.
if grep -qiE "$fio_error_re" <<<"$log"; then
    problems+=("fio reported a verify or I/O error")
fi
# --bdev rbd: stop the target with SIGTERM first; it must flush and close the image (librbd's
# write-back cache included) and exit 0, so the block below is read from the cluster.
if [[ $bdev == rbd && $target == spinblk && -n $target_pid ]] && kill -0 "$target_pid" 2>/dev/null; then
    t_stop=$(now_ms)
    kill -TERM "$target_pid"
    wait "$target_pid" && trc=0 || trc=$?
    target_pid=
    if ((trc != 0)); then
        problems+=("spinblk exited with status $trc on SIGTERM (rbd image not flushed and closed?)")
    elif ! grep -q 'flushed and closed' "$target_log"; then
        problems+=("spinblk did not report flushing and closing the rbd image")
    else
        echo "vm-test: SIGTERM: $(grep -m1 'rbd bdev .*flushed and closed' "$target_log" | sed 's/^spinblk: //'); exited 0 after $(secs $(($(now_ms) - t_stop))) s"
    fi
fi
# The guest wrote a block the host must find in the image file, byte for byte.
if ((hostdata)) && [[ $readonly_ == 0 ]]; then
    hd=$(grep -m1 '^VMTEST-HOSTDATA ' <<<"$log" || true)
    if [[ -z $hd ]]; then
        ((size < 8 * 1024 * 1024)) || problems+=("the guest reported no VMTEST-HOSTDATA block")
    else
        read -r _ hoff hlen hmd5 <<<"$hd"
        if [[ $bdev == rbd ]]; then
            src=$tmp/export.img
            rbd -c "$ceph_conf" export "rbd/$rbd_image" "$src" >/dev/null 2>"$tmp/export.err" ||
                problems+=("rbd export failed: $(tail -n1 "$tmp/export.err")")
            where="the rbd image (rbd export)"
        else
            src=$img
            where="the image file"
        fi
        got=$(dd if="$src" bs=65536 skip="$hoff" count=$((hlen / 65536)) iflag=skip_bytes 2>/dev/null | md5sum | cut -d' ' -f1)
        if [[ $got == "$hmd5" ]]; then
            echo "vm-test: host check: $where holds the guest's block at offset $hoff ($hlen bytes, md5 $got)"
        else
            problems+=("$where has md5 $got at offset $hoff, the guest wrote $hmd5")
        fi
    fi
fi
# The target must have survived the guest (a crash would be hidden if the guest had finished).
if [[ -n $target_pid ]] && ! kill -0 "$target_pid" 2>/dev/null; then
    wait "$target_pid" && trc=0 || trc=$?
    target_pid=
    problems+=("target exited during the test (status $trc)")
fi
if ((${#problems[@]})); then
    msg=$(printf '%s; ' "${problems[@]}")
    fail_loudly "${msg%; }"
fi
echo "vm-test: PASS ($what, ${elapsed}s)"
exit 0
