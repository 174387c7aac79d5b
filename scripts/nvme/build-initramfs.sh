#!/usr/bin/env bash
# Build (or reuse from cache) the busybox initramfs for scripts/nvme-vm-test.sh.
#
# Usage: scripts/nvme/build-initramfs.sh KERNEL_VERSION OUT_DIR
#
# Prints the path of the gzip'd cpio archive on stdout. It holds a static busybox, the guest
# init (scripts/nvme/init), and the kernel modules of /lib/modules/KERNEL_VERSION the guest
# needs, decompressed (busybox insmod loads plain .ko files only):
#   /nvmetest/modules/NN-*.ko   loaded at boot in this order: virtio_pci, 9p, 9pnet_virtio and
#                               their dependencies, and nvme-core's (t10-pi, crc-t10dif, ...)
#   /nvmetest/nvme/NN-*.ko      nvme-core and nvme, which init loads itself (and reloads with
#                               poll_queues=1)
# Same approach as scripts/vm/build-initramfs.sh (owned by the VM-test helper), which has no
# way to add modules; the archive is rebuilt only when one of its inputs changes.
set -euo pipefail

kver=${1:?usage: build-initramfs.sh KERNEL_VERSION OUT_DIR}
outdir=${2:?usage: build-initramfs.sh KERNEL_VERSION OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
boot_modules=(virtio_pci 9p 9pnet_virtio)
nvme_modules=(nvme_core nvme)

die() { echo "nvme build-initramfs: $*" >&2; exit 1; }

# shellcheck source=scripts/lib/initramfs.sh
source "$here/../lib/initramfs.sh"
initramfs_check_tools

# Every module after its dependencies; nvme-core and nvme themselves are marked seen so the boot
# list stops short of them while still loading what they depend on.
for m in "${boot_modules[@]}"; do
    visit "$m"
done
# nvme-core's dependencies load at boot; nvme-core and nvme themselves are init's business.
for m in "${nvme_modules[@]}"; do
    seen[$m]=1
done
for m in "${nvme_modules[@]}"; do
    for d in $(moddeps "$m"); do
        visit "$d"
    done
done
boot_order=("${order[@]}")
nvme_order=()
for m in "${nvme_modules[@]}"; do
    is_loadable "$m" || die "module $m is built in or missing; the test needs it as a module"
    nvme_order+=("$m")
done

key_files=("$here/build-initramfs.sh" "$here/../lib/initramfs.sh" "$here/init")
key=$(initramfs_key "${boot_order[@]}" "${nvme_order[@]}")
mkdir -p "$outdir"
out=$outdir/initramfs-$kver.cpio.gz
reuse_if_current "$out" "$key"

echo "nvme build-initramfs: building $out (boot: ${boot_order[*]}; nvme: ${nvme_order[*]})" >&2
work=$(mktemp -d "${TMPDIR:-/tmp}/spinblk-nvme-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,host,nvmetest/modules,nvmetest/nvme}
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"

i=0
for m in "${boot_order[@]}"; do
    unpack_module "$(modfile "$m")" "$root/nvmetest/modules/$(printf '%02d' "$i")-$m.ko"
    i=$((i + 1))
done
for m in "${nvme_order[@]}"; do
    unpack_module "$(modfile "$m")" "$root/nvmetest/nvme/$m.ko"
done

pack_initramfs "$root" "$out"
echo "$key" >"$out.stamp"
echo "$out"
