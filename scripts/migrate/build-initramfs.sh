#!/usr/bin/env bash
# Build (or reuse from cache) the initramfs of scripts/migrate-test.sh.
#
# Usage: scripts/migrate/build-initramfs.sh KERNEL_VERSION OUT_DIR GUEST_IO_BINARY
#
# Prints the path of the gzip'd cpio archive. It holds a static busybox, the guest init
# (scripts/migrate/init), the static spinblk-guest-io binary and the kernel modules
# virtio_pci, virtio_blk and qemu_fw_cfg with their dependencies (no 9p: a mounted 9p share
# blocks migration). Rebuilt only when an input changes (a stamp file records their hash).
set -euo pipefail

kver=${1:?usage: build-initramfs.sh KERNEL_VERSION OUT_DIR GUEST_IO_BINARY}
outdir=${2:?usage: build-initramfs.sh KERNEL_VERSION OUT_DIR GUEST_IO_BINARY}
gio=${3:?usage: build-initramfs.sh KERNEL_VERSION OUT_DIR GUEST_IO_BINARY}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# qemu_fw_cfg: the guest reads the name of the QEMU it runs on (-fw_cfg opt/spinblk/host).
want_modules=(virtio_pci virtio_blk qemu_fw_cfg)

die() { echo "migrate/build-initramfs: $*" >&2; exit 1; }

# shellcheck source=scripts/lib/initramfs.sh
source "$here/../lib/initramfs.sh"
initramfs_check_tools
[[ -x $gio ]] || die "$gio is not an executable"
ldd_out=$(ldd "$gio" 2>&1 || true)
[[ $ldd_out == *"statically linked"* || $ldd_out == *"not a dynamic executable"* ]] ||
    die "$gio is dynamically linked; it must be static (crt-static): $ldd_out"

for m in "${want_modules[@]}"; do
    visit "$m"
done

key_files=("$here/build-initramfs.sh" "$here/../lib/initramfs.sh" "$here/init" "$gio")
key=$(initramfs_key "${order[@]}")
mkdir -p "$outdir"
out=$outdir/initramfs-migrate-$kver.cpio.gz
reuse_if_current "$out" "$key"

echo "migrate/build-initramfs: building $out (modules: ${order[*]})" >&2
work=$(mktemp -d "${TMPDIR:-/tmp}/spinblk-migrate-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,migrate/modules}
cp "$busybox" "$root/bin/busybox"
cp "$gio" "$root/bin/spinblk-guest-io"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox" "$root/bin/spinblk-guest-io"
i=0
for m in "${order[@]}"; do
    unpack_module "$(modfile "$m")" "$root/migrate/modules/$(printf '%02d' "$i")-$m.ko"
    i=$((i + 1))
done
pack_initramfs "$root" "$out"
echo "$key" >"$out.stamp"
echo "$out"
