#!/usr/bin/env bash
# End-to-end test: boot a Debian kernel under QEMU (TCG) with a vhost-user-blk disk served by
# spinblk (or by qemu-storage-daemon, --target qsd, as a reference), check the disk's properties
# from inside the guest and run fio with data verification on it.
#
# Usage: scripts/vm-test.sh [options]
#   --size SIZE          disk size, bytes or with K/M/G/T suffix (binary)   [256M]
#   --block-size 512|4096  logical block size                               [512]
#   --readonly           export read-only: reads must work, writes must fail
#   --serial STR         serial the guest must see (spinblk only)           [spinblk-vmtest]
#   --num-queues N       virtqueues; the guest also gets N vCPUs            [2]
#   --cpus LIST          spinblk reactor cores                              [0]
#   --bdev malloc|null   backing bdev; null gets a read job only            [malloc]
#   --target spinblk|qsd                                                    [spinblk]
#   --timeout SECS       limit for the whole guest run                      [300]
#   --keep               keep the temp dir with the guest and target logs
#   --selftest-corrupt   harness self-test: the guest corrupts the disk between the write and
#                        the verify-only pass, so the test must FAIL
#   -h, --help
#
# Environment: SPINBLK_BIN (default target/release/spinblk, built with cargo if missing),
#   VMTEST_KERNEL (default: newest /boot/vmlinuz-*), VMTEST_FILL_PCT (share of the disk fio
#   writes, default 75).
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
bdev=malloc
target=spinblk
vm_timeout=300
keep=0
corrupt=0
fill_pct=${VMTEST_FILL_PCT:-75}

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
        --target) need_arg "$@"; target=$2; shift 2 ;;
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
[[ $bdev == malloc || $bdev == null ]] || die "--bdev must be malloc or null"
[[ $target == spinblk || $target == qsd ]] || die "--target must be spinblk or qsd"
[[ $vm_timeout =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
if ! [[ $fill_pct =~ ^[0-9]+$ ]] || ((fill_pct < 1 || fill_pct > 100)); then die "VMTEST_FILL_PCT must be 1..100"; fi
[[ $serial != *$'\n'* ]] || die "--serial must be one line"
[[ $corrupt == 0 || ($readonly_ == 0 && $bdev == malloc) ]] || die "--selftest-corrupt needs a writable malloc disk"
[[ $(id -u) == 0 ]] || die "must run as root (QEMU shares / with the guest; see scripts/install-deps.sh)"

for tool in qemu-system-x86_64 busybox fio cpio gzip; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
done
if [[ $target == qsd ]]; then
    command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found; run scripts/install-deps.sh"
fi

# Guest kernel: the newest /boot/vmlinuz-* (the Debian linux-image-amd64 kernel) unless given.
kernel=${VMTEST_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)}
[[ -n $kernel && -r $kernel ]] || die "no guest kernel /boot/vmlinuz-*; run scripts/install-deps.sh"
kver=${kernel##*/vmlinuz-}

# --- temp dir and cleanup ----------------------------------------------------------------------
tmp=$(mktemp -d /tmp/spinblk-vmtest.XXXXXX)
target_pid=
qemu_pid=
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
    local rc=$?
    trap - EXIT INT TERM
    # QEMU first (it is the vhost-user frontend), then the target.
    [[ -n $qemu_pid ]] && stop_pid "$qemu_pid"
    [[ -n $target_pid ]] && stop_pid "$target_pid"
    if ((keep)); then
        echo "vm-test: logs kept in $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "vm-test: interrupted" >&2; exit 130' INT
trap 'echo "vm-test: terminated" >&2; exit 143' TERM

sock=$tmp/vhost.sock
guest_log=$tmp/guest.log
target_log=$tmp/target.log
: >"$guest_log"
: >"$target_log"

# What fio prints on a verify or I/O error ("crc32c: verify failed at file ...", "verify: bad
# magic header ...", "err= 5", "fio: pid=..., err=84/...").
fio_error_re='verify failed|bad magic|bad header|err= *[1-9]|fio: pid=.*err=|io_u error'
log=

# fail_loudly MSG: the one way out on failure, with the evidence.
fail_loudly() {
    echo
    echo "######################################################################"
    echo "### VM-TEST FAIL: $*"
    echo "### target=$target bdev=$bdev size=$size bs=$bs readonly=$readonly_ queues=$queues"
    echo "######################################################################"
    if grep -qE '^VMTEST-.* FAIL$' <<<"${log:-}"; then
        echo "--- failed guest checks ---"
        grep -E '^VMTEST-.* FAIL$' <<<"$log"
    fi
    if grep -qiE "$fio_error_re" <<<"${log:-}"; then
        echo "--- fio error reports ---"
        grep -iE "$fio_error_re" <<<"$log" | head -n 20
    fi
    echo "--- guest log (last 60 lines of $guest_log) ---"
    tail -n 60 "$guest_log" | tr -d '\r'
    echo "--- target log (last 30 lines of $target_log) ---"
    tail -n 30 "$target_log"
    echo "--- end of logs ---"
    ((keep)) || echo "(rerun with --keep to keep the full logs)"
    exit 1
}

# --- initramfs ---------------------------------------------------------------------------------
# The cached base image (busybox, init, modules, fio jobs) plus a per-run archive with the
# expected values; the kernel unpacks concatenated archives one after the other.
base_initrd=$("$repo/scripts/vm/build-initramfs.sh" "$kver" "$repo/target/vm")
check_serial=0
[[ $target == spinblk ]] && check_serial=1
mkdir -p "$tmp/conf/vmtest"
cat >"$tmp/conf/vmtest/conf" <<CONF
VT_SIZE=$size
VT_BS=$bs
VT_RO=$readonly_
VT_QUEUES=$queues
VT_BDEV=$bdev
VT_CHECK_SERIAL=$check_serial
VT_FILL_PCT=$fill_pct
VT_CORRUPT=$corrupt
CONF
# The serial goes in its own file, byte for byte, so no quoting is involved.
printf '%s' "$serial" >"$tmp/conf/vmtest/serial"
(cd "$tmp/conf" && find . | cpio -o -H newc --quiet) | gzip -n >"$tmp/conf.cpio.gz"
cat "$base_initrd" "$tmp/conf.cpio.gz" >"$tmp/initrd"

# --- target ------------------------------------------------------------------------------------
if [[ $target == spinblk ]]; then
    bin=${SPINBLK_BIN:-$repo/target/release/spinblk}
    if [[ ! -x $bin ]]; then
        [[ -z ${SPINBLK_BIN:-} ]] || die "SPINBLK_BIN=$bin is not executable"
        echo "vm-test: building spinblk (cargo build --release -p spinblk)"
        (cd "$repo" && cargo build --release -p spinblk) || fail_loudly "cargo build --release -p spinblk failed"
    fi
    # The contract with the target: sizes are passed in bytes.
    target_cmd=("$bin" --socket "$sock")
    if [[ $bdev == malloc ]]; then target_cmd+=(--malloc "$size"); else target_cmd+=(--null "$size"); fi
    target_cmd+=(--block-size "$bs")
    ((readonly_)) && target_cmd+=(--readonly)
    target_cmd+=(--serial "$serial" --num-queues "$queues" --cpus "$cpus")
else
    # qemu-storage-daemon as the reference target (no serial; GET_ID gives a fixed string).
    if [[ $bdev == malloc ]]; then
        img=$tmp/disk.img
        truncate -s "$size" "$img"
        blockdev="driver=file,node-name=f,filename=$img"
    else
        blockdev="driver=null-co,node-name=f,size=$size,read-zeroes=on"
    fi
    ((readonly_)) && blockdev+=",read-only=on"
    if ((readonly_)); then writable=off; else writable=on; fi
    target_cmd=(qemu-storage-daemon --blockdev "$blockdev"
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$sock,writable=$writable,num-queues=$queues,logical-block-size=$bs")
fi
echo "vm-test: target: ${target_cmd[*]}"
"${target_cmd[@]}" >"$target_log" 2>&1 &
target_pid=$!

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
qemu_cmd=(qemu-system-x86_64
    -machine "q35,accel=tcg" -cpu max -smp "$queues" -m 1G
    -object "memory-backend-memfd,id=mem,size=1G,share=on" -numa "node,memdev=mem"
    -nodefaults -nographic -no-reboot -monitor none -serial "file:$guest_log"
    -kernel "$kernel" -initrd "$tmp/initrd"
    -append "console=ttyS0 panic=-1 quiet loglevel=4"
    -chardev "socket,id=vub,path=$sock"
    -device "vhost-user-blk-pci,chardev=vub,num-queues=$queues"
    -fsdev "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap"
    -device "virtio-9p-pci,fsdev=r,mount_tag=hostroot")
echo "vm-test: guest: kernel $kver, $queues vCPU(s), timeout ${vm_timeout}s"
start=$SECONDS
# QEMU runs in the background and this loop watches it: the INT/TERM traps run promptly (the
# sleeps are short), the run is stopped after --timeout seconds, and it is stopped at once if
# the target dies (the guest's I/O would otherwise hang until the timeout).
"${qemu_cmd[@]}" >"$tmp/qemu.out" 2>&1 &
qemu_pid=$!
target_died=0
timed_out=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    if ! kill -0 "$target_pid" 2>/dev/null; then
        target_died=1
        sleep 2 # let the guest log what it can
        stop_pid "$qemu_pid"
        break
    fi
    if ((SECONDS - start >= vm_timeout)); then
        timed_out=1
        stop_pid "$qemu_pid"
        break
    fi
    sleep 0.5
done
wait "$qemu_pid" && qrc=0 || qrc=$?
qemu_pid=
elapsed=$((SECONDS - start))

# --- report ------------------------------------------------------------------------------------
log=$(tr -d '\r' <"$guest_log")
echo "vm-test: guest ran ${elapsed}s (qemu exit status $qrc)"
echo "--- guest checks ---"
grep -E '^VMTEST-(BOOTED|CHECK|INFO)' <<<"$log" || true
echo "--- fio ---"
# Per fio run: its markers, job status lines, bandwidth lines, and anything error-like.
awk '
    /^VMTEST-FIO-BEGIN/ { infio = 1; print; next }
    /multiple writers may overwrite/ { next }  # warning for numjobs>1, but the regions are disjoint
    /^VMTEST-FIO-END/ { infio = 0; print; next }
    infio && (/err=|IOPS=|Run status|READ:|WRITE:|verify|[Ee]rror|fail|bad /) { print }
' <<<"$log"

problems=()
if ((target_died)); then
    problems+=("target died while the guest was running; QEMU was stopped")
elif ((timed_out)); then
    problems+=("guest timed out after ${vm_timeout}s")
elif ((qrc != 0)); then
    problems+=("qemu exited with status $qrc")
fi
if [[ -s $tmp/qemu.out ]]; then
    echo "--- qemu stderr ---"
    cat "$tmp/qemu.out"
fi
grep -q '^VMTEST-RESULT PASS$' <<<"$log" || problems+=("guest did not report VMTEST-RESULT PASS")
if grep -qE '^VMTEST-(CHECK|FIO-END) .* FAIL$' <<<"$log"; then
    problems+=("guest reported failed checks")
fi
# Independent of the guest's verdict: any fio verify/I-O error report fails the test.
if grep -qiE "$fio_error_re" <<<"$log"; then
    problems+=("fio reported a verify or I/O error")
fi
# The target must have survived the guest (a crash would be hidden if the guest had finished).
if ! kill -0 "$target_pid" 2>/dev/null; then
    wait "$target_pid" && trc=0 || trc=$?
    target_pid=
    problems+=("target exited during the test (status $trc)")
fi
if ((${#problems[@]})); then
    msg=$(printf '%s; ' "${problems[@]}")
    fail_loudly "${msg%; }"
fi
echo "vm-test: PASS (target=$target bdev=$bdev size=$size bs=$bs readonly=$readonly_ queues=$queues, ${elapsed}s)"
exit 0
