#!/usr/bin/env bash
# Build (or reuse from cache) the busybox initramfs for scripts/vm-test.sh.
#
# Usage: scripts/vm/build-initramfs.sh KERNEL_VERSION OUT_DIR
#
# Prints the path of the gzip'd cpio archive on stdout. The archive holds a static busybox,
# the guest init (scripts/vm/init), the fio job files (scripts/vm/fio/*.fio) and the kernel
# modules virtio_pci, virtio_blk, 9p, 9pnet_virtio plus everything they depend on, taken from
# /lib/modules/KERNEL_VERSION and decompressed on the host (busybox insmod loads plain .ko
# files only). The archive is rebuilt only when one of those inputs changes; a stamp file next
# to it records a hash of the inputs.
#
# The per-run settings (size, block size, ...) are NOT in here: vm-test.sh appends a second,
# tiny cpio archive with /vmtest/conf (the kernel unpacks concatenated archives in order).
set -euo pipefail

kver=${1:?usage: build-initramfs.sh KERNEL_VERSION OUT_DIR}
outdir=${2:?usage: build-initramfs.sh KERNEL_VERSION OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Modules the guest needs; their dependencies are added below.
want_modules=(virtio_pci virtio_blk 9p 9pnet_virtio)

die() { echo "build-initramfs: $*" >&2; exit 1; }

# shellcheck source=scripts/lib/initramfs.sh
source "$here/../lib/initramfs.sh"
initramfs_check_tools

for m in "${want_modules[@]}"; do
    visit "$m"
done

# Cache key: kernel version, module list with file identities, busybox, and our own inputs.
key_files=("$here/build-initramfs.sh" "$here/../lib/initramfs.sh" "$here/init" "$here"/fio/*.fio)
key=$(initramfs_key "${order[@]}")
mkdir -p "$outdir"
out=$outdir/initramfs-$kver.cpio.gz
reuse_if_current "$out" "$key"

echo "build-initramfs: building $out (modules: ${order[*]})" >&2
work=$(mktemp -d "${TMPDIR:-/tmp}/spinblk-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,host,vmtest/fio,vmtest/modules}
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
cp "$here"/fio/*.fio "$root/vmtest/fio/"

# Copy the modules, decompressed, numbered so that the glob order is the load order.
i=0
for m in "${order[@]}"; do
    f=$(modfile "$m")
    unpack_module "$f" "$root/vmtest/modules/$(printf '%02d' "$i")-$m.ko"
    i=$((i + 1))
done

pack_initramfs "$root" "$out"
echo "$key" >"$out.stamp"
echo "$out"
