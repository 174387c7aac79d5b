#!/usr/bin/env bash
# Live-migration test: a Linux guest (QEMU TCG) whose disk is a vhost-user-blk device migrates
# from a source QEMU to a destination QEMU started with -incoming and back again, while
# spinblk-guest-io (crates/guest-tools) runs in it from a busybox initramfs (no 9p: a mounted
# 9p share blocks migration). The guest writes blocks stamped with (block, generation, CRC-32C)
# and reads them back all along: corrupt data, STALE data (an older generation than the last
# completed write) and LOST requests (pending longer than --lost-secs) fail the test. It also
# refills a large buffer in guest RAM from the disk; after each switch-over that buffer must
# hold what was last read into it: those pages were written by the backend, and reach the
# destination only if the backend logged them as dirty. After the last migration the guest
# verifies everything it wrote. QEMU's figures (total time, downtime) are printed per
# migration, and a MIGRATE-FIGURES line sums them up.
#
# Usage: scripts/migrate-test.sh [options]
#   --backend spinblk|qsd   who serves the disk                                 [spinblk]
#                        spinblk: one process, a shared malloc bdev and two controllers
#                        (sockets A and B); the QEMUs alternate between them.
#                        qsd: qemu-storage-daemon, one raw file on /dev/shm (cache.direct=off)
#                        exported on sockets A and B.
#   --one-socket         spinblk: ONE controller; every QEMU connects to the same socket
#                        (the destination attaches while the source is still connected)
#   --qsd-odirect        qsd: the image on disk with cache.direct=on (qsd 7.2 answers
#                        GET_VRING_BASE before such requests finish: expect LOST requests)
#   --negative-control   disable dirty logging in the backend (spinblk:
#                        SPINBLK_TEST_DISABLE_DIRTY_LOG=1; qsd: an LD_PRELOAD shim that makes
#                        its log mapping private) and EXPECT the memory check to fail: exit 0
#                        only if it did
#   --inject stale|corrupt|hang  harness self-test: the guest injects that fault after the
#                        first migration; exit 0 only if the guest caught it
#   --migrations N       migrations (there, back, there, ...)                   [2]
#   --smp N              guest vCPUs = virtqueues                                [2]
#   --stress-mib N       writer/verifier region                                 [64]
#   --mem-mib N          device-written buffer in guest RAM; its disk region holds 4 copies [16]
#   --threads N          writer/verifier threads in the guest                   [4]
#   --lost-secs N        a request pending this long is LOST                    [20]
#   --max-bandwidth MIB  QMP max-bandwidth, MiB/s                               [1024]
#   --downtime-limit MS  QMP downtime-limit                                     [300]
#   --migration-timeout SECS  per migration                                     [90]
#   --keep               keep the work dir (logs)
#   -h, --help
#
# Environment: SPINBLK_BIN (default target/release/spinblk, built if missing), GUEST_IO_BIN
#   (default: built here, static), MIGRATE_KERNEL (default: newest /boot/vmlinuz-*).
# Needs root (mknod for the initramfs), qemu-system-x86 and busybox-static
# (scripts/install-deps.sh), python3, and for qsd qemu-storage-daemon.
# Exit status: 0 pass, 1 fail, 2 setup error (with --negative-control / --inject: 0 only if
# the expected failure was seen).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

backend=spinblk
one_socket=0
qsd_odirect=0
negative=0
inject=
migrations=2
smp=2
stress_mib=64
mem_mib=16
threads=4
lost_secs=20
max_bw_mib=1024
downtime_limit=300
mig_timeout=90
keep=0

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "migrate-test: error: $*" >&2; exit 2; }
need_arg() { [[ $# -ge 2 ]] || die "$1 needs a value"; }
num() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a number"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --backend) need_arg "$@"; backend=$2; shift 2 ;;
        --one-socket) one_socket=1; shift ;;
        --qsd-odirect) qsd_odirect=1; shift ;;
        --negative-control) negative=1; shift ;;
        --inject) need_arg "$@"; inject=$2; shift 2 ;;
        --migrations) need_arg "$@"; num "$1" "$2"; migrations=$2; shift 2 ;;
        --smp) need_arg "$@"; num "$1" "$2"; smp=$2; shift 2 ;;
        --stress-mib) need_arg "$@"; num "$1" "$2"; stress_mib=$2; shift 2 ;;
        --mem-mib) need_arg "$@"; num "$1" "$2"; mem_mib=$2; shift 2 ;;
        --threads) need_arg "$@"; num "$1" "$2"; threads=$2; shift 2 ;;
        --lost-secs) need_arg "$@"; num "$1" "$2"; lost_secs=$2; shift 2 ;;
        --max-bandwidth) need_arg "$@"; num "$1" "$2"; max_bw_mib=$2; shift 2 ;;
        --downtime-limit) need_arg "$@"; num "$1" "$2"; downtime_limit=$2; shift 2 ;;
        --migration-timeout) need_arg "$@"; num "$1" "$2"; mig_timeout=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

[[ $backend == spinblk || $backend == qsd ]] || die "--backend must be spinblk or qsd"
[[ $one_socket == 0 || $backend == spinblk ]] || die "--one-socket is a spinblk option (qsd's export takes one client at a time)"
[[ $qsd_odirect == 0 || $backend == qsd ]] || die "--qsd-odirect is a qsd option"
[[ -z $inject || $inject =~ ^(stale|corrupt|hang)$ ]] || die "--inject must be stale, corrupt or hang"
[[ -z $inject || $negative == 0 ]] || die "--inject and --negative-control do not mix"
((migrations >= 1 && migrations <= 10)) || die "--migrations must be 1..10"
((smp >= 1 && smp <= 8)) || die "--smp must be 1..8"
((mem_mib >= 4)) || die "--mem-mib must be at least 4"
((stress_mib >= 4)) || die "--stress-mib must be at least 4"
[[ $(id -u) == 0 ]] || die "must run as root (the initramfs needs mknod)"
for tool in qemu-system-x86_64 busybox cpio gzip python3; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
done
[[ $backend != qsd ]] || command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found"

kernel=${MIGRATE_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)}
[[ -n $kernel && -r $kernel ]] || die "no guest kernel /boot/vmlinuz-*; run scripts/install-deps.sh"
kver=${kernel##*/vmlinuz-}

# --- builds ------------------------------------------------------------------------------------
# The guest tool: static (no libc in the initramfs), its own target dir under target/<triple>.
gio=${GUEST_IO_BIN:-}
if [[ -z $gio ]]; then
    triple=x86_64-unknown-linux-gnu
    echo "migrate-test: building spinblk-guest-io (static)"
    (cd "$repo" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
        cargo build --quiet --release -p spinblk-guest-io --target "$triple") ||
        die "cargo build of spinblk-guest-io failed"
    gio=$repo/target/$triple/release/spinblk-guest-io
fi
[[ -x $gio ]] || die "$gio is not executable"
# ldd says "statically linked" for a static-pie binary (exit 0), "not a dynamic executable"
# for a classic static one (exit 1).
ldd_out=$(ldd "$gio" 2>&1 || true)
[[ $ldd_out == *"statically linked"* || $ldd_out == *"not a dynamic executable"* ]] ||
    die "$gio is dynamically linked (want crt-static): $ldd_out"
if [[ $backend == spinblk ]]; then
    bin=${SPINBLK_BIN:-$repo/target/release/spinblk}
    if [[ ! -x $bin ]]; then
        [[ -z ${SPINBLK_BIN:-} ]] || die "SPINBLK_BIN=$bin is not executable"
        echo "migrate-test: building spinblk (cargo build --release -p spinblk)"
        (cd "$repo" && cargo build --quiet --release -p spinblk) || die "cargo build of spinblk failed"
    fi
fi
initrd=$("$repo/scripts/migrate/build-initramfs.sh" "$kver" "$repo/target/migrate" "$gio") ||
    die "building the initramfs failed"

# --- work dir ----------------------------------------------------------------------------------
# Short path: unix socket paths must stay under 108 bytes.
work=$(mktemp -d /tmp/spinblk-mig.XXXXXX)
img=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((keep)); then
        echo "migrate-test: logs kept in $work${img:+ (image $img)}"
    else
        rm -rf "$work"
        [[ -n $img ]] && rm -f "$img"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

disk_mib=$((stress_mib + 4 * mem_mib + 16))
sock_a=$work/a.sock
sock_b=$work/b.sock
sockets=(--socket "$sock_a" --socket "$sock_b")
benv=()
if [[ $backend == spinblk ]]; then
    if ((one_socket)); then
        bcmd=("$bin" --bdev "name=d0,malloc=${disk_mib}M" --controller "socket=$sock_a,bdev=d0,num-queues=$smp")
        sockets=(--socket "$sock_a")
    else
        bcmd=("$bin" --bdev "name=d0,malloc=${disk_mib}M,shared"
            --controller "socket=$sock_a,bdev=d0,num-queues=$smp"
            --controller "socket=$sock_b,bdev=d0,num-queues=$smp")
    fi
    ((negative)) && benv+=(--backend-env SPINBLK_TEST_DISABLE_DIRTY_LOG=1)
else
    if ((qsd_odirect)); then
        # O_DIRECT needs a real file system, not tmpfs.
        mkdir -p "$repo/target/migrate"
        img=$(mktemp "$repo/target/migrate/disk.XXXXXX.img")
        cache=on
    else
        img=$(mktemp /dev/shm/spinblk-mig.XXXXXX.img)
        cache=off
    fi
    truncate -s "${disk_mib}M" "$img"
    exp="type=vhost-user-blk,node-name=f,writable=on,num-queues=$smp,logical-block-size=512,addr.type=unix"
    bcmd=(qemu-storage-daemon --blockdev "driver=file,node-name=f,filename=$img,cache.direct=$cache"
        --export "$exp,id=ea,addr.path=$sock_a" --export "$exp,id=eb,addr.path=$sock_b")
    if ((negative)); then
        command -v cc >/dev/null || die "cc not found (the qsd negative control compiles an LD_PRELOAD shim)"
        cc -O2 -shared -fPIC -o "$work/nolog-preload.so" "$repo/scripts/migrate/nolog-preload.c" ||
            die "cannot compile scripts/migrate/nolog-preload.c"
        benv+=(--backend-env "LD_PRELOAD=$work/nolog-preload.so")
    fi
fi

gargs="--stress-mib=$stress_mib,--mem-mib=$mem_mib,--threads=$threads,--lost-secs=$lost_secs"
dargs=()
((negative)) && dargs+=(--negative-control)
[[ -n $inject ]] && dargs+=(--inject "$inject")
echo "migrate-test: backend=$backend$( ((one_socket)) && echo ' one-socket')$( ((negative)) && echo ' NEGATIVE-CONTROL')${inject:+ inject=$inject}, $migrations migrations, kernel $kver, work dir $work"
set +e
python3 -B "$repo/scripts/migrate/drive.py" --workdir "$work" --kernel "$kernel" --initrd "$initrd" \
    --append "console=ttyS0 panic=-1 quiet loglevel=4 gio=$gargs" \
    --smp "$smp" --queues "$smp" "${sockets[@]}" --migrations "$migrations" \
    --max-bandwidth $((max_bw_mib * 1024 * 1024)) --downtime-limit "$downtime_limit" \
    --migration-timeout "$mig_timeout" --lost-secs "$lost_secs" "${dargs[@]}" "${benv[@]}" -- "${bcmd[@]}"
rc=$?
set -e
exit "$rc"
