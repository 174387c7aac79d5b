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
moddir=/lib/modules/$kver
boot_modules=(virtio_pci 9p 9pnet_virtio)
nvme_modules=(nvme_core nvme)

die() { echo "nvme build-initramfs: $*" >&2; exit 1; }

[[ -d $moddir ]] || die "no modules for kernel $kver in $moddir (install linux-image-amd64?)"
busybox=$(command -v busybox || true)
[[ -n $busybox ]] || die "busybox not found (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static"
fi
command -v modinfo >/dev/null || die "modinfo not found (install kmod)"
command -v cpio >/dev/null || die "cpio not found"

modfile() { modinfo -k "$kver" -F filename "$1" 2>/dev/null | head -n1; }
moddeps() { modinfo -k "$kver" -F depends "$1" 2>/dev/null | tr ',' ' '; }

# Depth-first: every module after its dependencies. `skip` holds modules to leave out (so the
# boot list can stop short of nvme-core itself while still loading what it depends on).
declare -A seen=()
order=()
visit() {
    local m=${1//-/_} d f
    [[ -n ${seen[$m]:-} ]] && return 0
    seen[$m]=1
    f=$(modfile "$m")
    if [[ -z $f || $f == "(builtin)" || $f == builtin* ]]; then
        [[ -n $f ]] || echo "nvme build-initramfs: note: module $m not found, assuming built-in" >&2
        return 0
    fi
    for d in $(moddeps "$m"); do
        visit "$d"
    done
    order+=("$m")
}
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
    f=$(modfile "$m")
    [[ -n $f && $f != "(builtin)" && $f != builtin* ]] || die "module $m is built in or missing; the test needs it as a module"
    nvme_order+=("$m")
done

key=$(
    {
        echo "kver=$kver"
        for m in "${boot_order[@]}" "${nvme_order[@]}"; do
            f=$(modfile "$m")
            echo "mod $m $(stat -c '%s %Y' "$f") $f"
        done
        stat -c 'busybox %s %Y' "$busybox"
        cat "$here/build-initramfs.sh" "$here/init"
    } | sha256sum | cut -d' ' -f1
)
mkdir -p "$outdir"
out=$outdir/initramfs-$kver.cpio.gz
stamp=$out.stamp
if [[ -f $out && -f $stamp && $(cat "$stamp") == "$key" ]]; then
    echo "$out"
    exit 0
fi

echo "nvme build-initramfs: building $out (boot: ${boot_order[*]}; nvme: ${nvme_order[*]})" >&2
work=$(mktemp -d "${TMPDIR:-/tmp}/spinblk-nvme-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,host,nvmetest/modules,nvmetest/nvme}
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"

unpack() {
    case $1 in
        *.ko) cp "$1" "$2" ;;
        *.ko.xz) xz -dc "$1" >"$2" ;;
        *.ko.zst) zstd -q -dc "$1" >"$2" ;;
        *.ko.gz) gzip -dc "$1" >"$2" ;;
        *) die "don't know how to unpack module file $1" ;;
    esac
}
i=0
for m in "${boot_order[@]}"; do
    unpack "$(modfile "$m")" "$root/nvmetest/modules/$(printf '%02d' "$i")-$m.ko"
    i=$((i + 1))
done
for m in "${nvme_order[@]}"; do
    unpack "$(modfile "$m")" "$root/nvmetest/nvme/$m.ko"
done

mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
    gzip -9n >"$work/initramfs.cpio.gz"
mv "$work/initramfs.cpio.gz" "$out"
echo "$key" >"$stamp"
echo "$out"
