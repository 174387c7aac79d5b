#!/usr/bin/env bash
# End-to-end test of the NVMe passthrough bdev (crates/bdev/src/nvme): boot a Debian kernel
# under QEMU (TCG) with two emulated NVMe controllers (serial spinblk0: 512-byte LBAs, the main
# one; spinblk4k: 4096-byte LBAs and a smaller MDTS, data checks only) and run, in the guest:
#   * nvme_check (crates/bdev/examples) on each namespace's char device (/dev/ngXn1): writes at queue depth, multi-segment,
#     larger-than-MDTS and misaligned (bounced) requests, flush, 200 rounds of flushes among
#     reads (a polled channel must never poll a flush: Linux < 6.5 crashes), write-zeroes, discard, all read
#     back through the bdev; then the same bytes read through the block device (dd iflag=direct)
#     and compared with cmp. Once with interrupt-driven queues, once with the nvme driver
#     reloaded with poll_queues=1 and the bdev polling (IORING_SETUP_IOPOLL).
#   * the refusals: the block device, a non-NVMe char device, polling without poll queues.
#   * when target/release/spinblk has --nvme: spinblk serving the namespace over vhost-user, the
#     vhost_verify client (crates/testkit/examples, libblkio) writing and verifying through it,
#     and the block device compared with what the client wrote; once with interrupt-driven
#     queues, and once more after the poll reload with --nvme-poll (the reactor polling the
#     ring, the client's flushes and write-zeroes going through the interrupt-driven one).
#   * with --bench: 4 KiB random read/write at QD1 and QD32 through the passthrough bdev and
#     through the io_uring bdev on the block device (the device is emulated: only ratios mean
#     anything).
#
# Usage: scripts/nvme-vm-test.sh [--bench] [--bench-secs N] [--timeout SECS] [--keep] [--no-build]
# Environment: VMTEST_KERNEL (default: newest /boot/vmlinuz-*); SPINBLK_BIN (default
#   target/release/spinblk, built with cargo); SPINBLK_NVME_ARGS (the bdev arguments for
#   spinblk, default "--nvme @NG@"; @NG@ and @BLK@ become the namespace's char and block device
#   in the guest, so "--file @BLK@" exercises the vhost-user half with the io_uring bdev).
# Needs root (QEMU shares / read-only with the guest) and qemu-system-x86, linux-image-amd64,
# busybox-static (scripts/install-deps.sh).
# Exit status: 0 only if the guest reported NVMETEST-RESULT PASS and no check failed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench=0
bench_secs=2
vm_timeout=300
keep=0
build=1

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "nvme-vm-test: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --bench) bench=1; shift ;;
        --bench-secs) [[ $# -ge 2 ]] || die "--bench-secs needs a value"; bench_secs=$2; shift 2 ;;
        --timeout) [[ $# -ge 2 ]] || die "--timeout needs a value"; vm_timeout=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $bench_secs =~ ^[1-9][0-9]*$ ]] || die "--bench-secs must be a positive number"
[[ $vm_timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number"
[[ $(id -u) == 0 ]] || die "must run as root (QEMU shares / with the guest)"
for tool in qemu-system-x86_64 busybox cpio gzip timeout truncate; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-deps.sh"
done
kernel=${VMTEST_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)}
[[ -n $kernel && -r $kernel ]] || die "no guest kernel /boot/vmlinuz-*; run scripts/install-deps.sh"
kver=${kernel##*/vmlinuz-}

# --- binaries ----------------------------------------------------------------------------------
if ((build)); then
    echo "nvme-vm-test: building the nvme_check and vhost_verify examples"
    (cd "$repo" && cargo build --release -q -p spinblk-bdev -p spinblk-testkit --example nvme_check --example vhost_verify) ||
        die "cargo build of the examples failed"
    if ! (cd "$repo" && cargo build --release -q -p spinblk); then
        echo "nvme-vm-test: warning: cargo build -p spinblk failed; using the existing binary, if any" >&2
    fi
fi
for ex in nvme_check vhost_verify; do
    [[ -x $repo/target/release/examples/$ex ]] || die "target/release/examples/$ex missing (drop --no-build)"
done
spinblk=${SPINBLK_BIN:-$repo/target/release/spinblk}
spinblk_args=${SPINBLK_NVME_ARGS:-"--nvme @NG@"}
run_spinblk=0
spinblk_why=""
if [[ ! -x $spinblk ]]; then
    spinblk_why="no $spinblk"
elif [[ -z ${SPINBLK_NVME_ARGS:-} ]] && ! "$spinblk" --help 2>&1 | grep -q -- '--nvme'; then
    spinblk_why="$spinblk has no --nvme option yet"
else
    run_spinblk=1
fi

# --- temp dir, initramfs, disk -----------------------------------------------------------------
mkdir -p "$repo/target/nvme-vm"
tmp=$(mktemp -d "$repo/target/nvme-vm/run.XXXXXX")
# The guest sees the host root through 9p but mounts its own tmpfs on /tmp, so the binaries it
# runs are staged outside /tmp (the checkout itself may be under /tmp, as CI's clone can be).
bindir=$(mktemp -d /var/tmp/spinblk-nvme-vm.XXXXXX)
qemu_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    rm -rf "$bindir"
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    if ((keep)); then echo "nvme-vm-test: logs kept in $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "nvme-vm-test: interrupted" >&2; exit 130' INT
trap 'echo "nvme-vm-test: terminated" >&2; exit 143' TERM

cp "$repo/target/release/examples/nvme_check" "$repo/target/release/examples/vhost_verify" "$bindir/"
if ((run_spinblk)); then
    cp "$spinblk" "$bindir/spinblk"
fi
base_initrd=$("$repo/scripts/nvme/build-initramfs.sh" "$kver" "$repo/target/nvme-vm")
mkdir -p "$tmp/conf/nvmetest"
cat >"$tmp/conf/nvmetest/conf" <<CONF
NT_BIN_DIR='$bindir'
NT_SPINBLK=$run_spinblk
NT_SPINBLK_BIN='$bindir/spinblk'
NT_SPINBLK_ARGS='$spinblk_args'
NT_SPINBLK_WHY='$spinblk_why'
NT_BENCH=$bench
NT_BENCH_SECS=$bench_secs
CONF
(cd "$tmp/conf" && find . | cpio -o -H newc --quiet) | gzip -n >"$tmp/conf.cpio.gz"
cat "$base_initrd" "$tmp/conf.cpio.gz" >"$tmp/initrd"
img=$tmp/nvme.img
img4k=$tmp/nvme4k.img
truncate -s 256M "$img" "$img4k"
guest_log=$tmp/guest.log
: >"$guest_log"

# --- guest -------------------------------------------------------------------------------------
# discard=unmap: the controller's Dataset Management punches holes in the image (QEMU's
# default, discard=ignore, would drop them and deallocated blocks would keep their data).
qemu_cmd=(qemu-system-x86_64
    -machine "q35,accel=tcg" -cpu max -smp 2 -m 1G
    -nodefaults -nographic -no-reboot -monitor none -serial "file:$guest_log"
    -kernel "$kernel" -initrd "$tmp/initrd"
    -append "console=ttyS0 panic=-1 quiet loglevel=4"
    -drive "if=none,id=n0,file=$img,format=raw,discard=unmap"
    -device "nvme,serial=spinblk0,drive=n0"
    -drive "if=none,id=n1,file=$img4k,format=raw,discard=unmap"
    -device "nvme,serial=spinblk4k,drive=n1,logical_block_size=4096,physical_block_size=4096,mdts=5"
    -fsdev "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap"
    -device "virtio-9p-pci,fsdev=r,mount_tag=hostroot")
echo "nvme-vm-test: guest kernel $kver, timeout ${vm_timeout}s, spinblk over vhost-user: $(
    ((run_spinblk)) && echo "yes ($spinblk_args)" || echo "no ($spinblk_why)"), bench: $bench"
start=$SECONDS
timeout -k 10 "$vm_timeout" "${qemu_cmd[@]}" >"$tmp/qemu.out" 2>&1 &
qemu_pid=$!
wait "$qemu_pid" && qrc=0 || qrc=$?
qemu_pid=
elapsed=$((SECONDS - start))

# --- report ------------------------------------------------------------------------------------
log=$(tr -d '\r' <"$guest_log")
echo "nvme-vm-test: guest ran ${elapsed}s (qemu exit status $qrc)"
grep -E '^(NVMETEST-(BOOTED|CHECK|INFO|END)|NVME-(CHECK|INFO|BENCH|BENCH-RATIO)|VHOST-(CHECK|INFO))' <<<"$log" || true
problems=()
((qrc == 124)) && problems+=("guest timed out after ${vm_timeout}s")
((qrc != 0 && qrc != 124)) && problems+=("qemu exited with status $qrc")
grep -q '^NVMETEST-RESULT PASS$' <<<"$log" || problems+=("guest did not report NVMETEST-RESULT PASS")
grep -qE '^(NVMETEST|NVME|VHOST)-(CHECK|END) .*FAIL' <<<"$log" && problems+=("guest reported failed checks")
if ((${#problems[@]})); then
    echo
    echo "######################################################################"
    echo "### NVME-VM-TEST FAIL: $(printf '%s; ' "${problems[@]}")"
    echo "######################################################################"
    grep -E ' FAIL' <<<"$log" || true
    [[ -s $tmp/qemu.out ]] && { echo "--- qemu output ---"; cat "$tmp/qemu.out"; }
    # A guest kernel oops scrolls out of the last lines when a task then hangs: show its start.
    oops=$(grep -m1 -nE '(BUG:|Oops|general protection fault|WARNING: CPU|Kernel panic)' <<<"$log" |
        cut -d: -f1 || true)
    if [[ -n $oops ]]; then
        echo "--- guest kernel report (from guest log line $oops, 40 lines) ---"
        tail -n "+$oops" <<<"$log" | head -n 40 || true
    fi
    echo "--- guest log (last 60 lines) ---"
    tail -n 60 <<<"$log"
    ((keep)) || echo "(rerun with --keep to keep $tmp)"
    exit 1
fi
echo "nvme-vm-test: PASS (${elapsed}s)"
