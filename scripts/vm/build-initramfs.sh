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
moddir=/lib/modules/$kver
# Modules the guest needs; their dependencies are added below.
want_modules=(virtio_pci virtio_blk 9p 9pnet_virtio)

die() { echo "build-initramfs: $*" >&2; exit 1; }

[[ -d $moddir ]] || die "no modules for kernel $kver in $moddir (install linux-image-amd64?)"
busybox=$(command -v busybox || true)
[[ -n $busybox ]] || die "busybox not found (install busybox-static)"
# A dynamically linked busybox would not run in the initramfs (no libc there).
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static"
fi
command -v modinfo >/dev/null || die "modinfo not found (install kmod)"
command -v cpio >/dev/null || die "cpio not found"

# Resolve module -> file and its dependencies against the *guest* kernel's module tree.
modfile() {
    # modinfo -k VER looks NAME up in /lib/modules/VER/modules.dep (built-ins give "(builtin)"
    # or an empty string, depending on the kmod version).
    modinfo -k "$kver" -F filename "$1" 2>/dev/null | head -n1
}
moddeps() {
    modinfo -k "$kver" -F depends "$1" 2>/dev/null | tr ',' ' '
}

# Depth-first topological sort: every module is listed after all of its dependencies.
declare -A seen=()
order=()
visit() {
    local m=$1 d f
    [[ -n ${seen[$m]:-} ]] && return 0
    seen[$m]=1
    f=$(modfile "$m")
    if [[ -z $f || $f == "(builtin)" || $f == builtin* ]]; then
        # Built into the kernel (or unknown): nothing to load.
        [[ -n $f ]] || echo "build-initramfs: note: module $m not found in $moddir, assuming built-in" >&2
        return 0
    fi
    for d in $(moddeps "$m"); do
        visit "$d"
    done
    order+=("$m")
}
for m in "${want_modules[@]}"; do
    visit "$m"
done

# Cache key: kernel version, module list with file identities, busybox, and our own inputs.
key=$(
    {
        echo "kver=$kver"
        for m in "${order[@]}"; do
            f=$(modfile "$m")
            echo "mod $m $(stat -c '%s %Y' "$f") $f"
        done
        stat -c 'busybox %s %Y' "$busybox"
        cat "$here/build-initramfs.sh" "$here/init" "$here"/fio/*.fio
    } | sha256sum | cut -d' ' -f1
)
mkdir -p "$outdir"
out=$outdir/initramfs-$kver.cpio.gz
stamp=$out.stamp
if [[ -f $out && -f $stamp && $(cat "$stamp") == "$key" ]]; then
    echo "$out"
    exit 0
fi

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
    dst=$root/vmtest/modules/$(printf '%02d' "$i")-$m.ko
    case $f in
        *.ko) cp "$f" "$dst" ;;
        *.ko.xz) xz -dc "$f" >"$dst" ;;
        *.ko.zst) zstd -q -dc "$f" >"$dst" ;;
        *.ko.gz) gzip -dc "$f" >"$dst" ;;
        *) die "don't know how to unpack module file $f" ;;
    esac
    i=$((i + 1))
done

# /dev/console must exist before devtmpfs is mounted, or init starts without stdio.
# (mknod needs root; vm-test.sh runs as root anyway, as QEMU needs the host root shared.)
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
    gzip -9n >"$work/initramfs.cpio.gz"
mv "$work/initramfs.cpio.gz" "$out"
echo "$key" >"$stamp"
echo "$out"
