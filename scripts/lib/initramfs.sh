# Shared pieces of the busybox initramfs builders (scripts/vm/build-initramfs.sh and
# scripts/nvme/build-initramfs.sh). Source it after setting `kver` (the guest kernel version)
# and `die` (an error function); it defines:
#   initramfs_check_tools        busybox-static, modinfo and cpio are there, modules too
#   modfile NAME / moddeps NAME  a module's file / dependencies in the guest kernel's tree
#   visit NAME                   appends NAME to `order` after its dependencies (depth first;
#                                names in `seen` are skipped; built-in modules are left out)
#   is_loadable NAME             NAME is a module file, not built in
#   unpack_module FILE DEST      copies a module, decompressed (busybox insmod wants plain .ko)
#   initramfs_key MODULE...      a hash of the kernel version, those modules' files, busybox and
#                                the files in the `key_files` array: what an archive is built from
#   reuse_if_current OUT KEY     prints OUT and exits when its stamp says it was built from KEY
#   pack_initramfs ROOT OUT      adds /dev/console and /dev/null, writes the gzip'd cpio
# shellcheck shell=bash

# shellcheck disable=SC2154 # kver is set by the sourcing script
moddir=/lib/modules/$kver
declare -A seen=()
order=()

initramfs_check_tools() {
    [[ -d $moddir ]] || die "no modules for kernel $kver in $moddir (install linux-image-amd64?)"
    busybox=$(command -v busybox || true)
    [[ -n $busybox ]] || die "busybox not found (install busybox-static)"
    # A dynamically linked busybox would not run in the initramfs (no libc there).
    if ldd "$busybox" >/dev/null 2>&1; then
        die "$busybox is dynamically linked; install busybox-static"
    fi
    command -v modinfo >/dev/null || die "modinfo not found (install kmod)"
    command -v cpio >/dev/null || die "cpio not found"
}

# modinfo -k VER looks NAME up in /lib/modules/VER/modules.dep (built-ins give "(builtin)" or an
# empty string, depending on the kmod version).
modfile() { modinfo -k "$kver" -F filename "$1" 2>/dev/null | head -n1; }
moddeps() { modinfo -k "$kver" -F depends "$1" 2>/dev/null | tr ',' ' '; }

is_loadable() {
    local f
    f=$(modfile "$1")
    [[ -n $f && $f != "(builtin)" && $f != builtin* ]]
}

visit() {
    local m=${1//-/_} d
    [[ -n ${seen[$m]:-} ]] && return 0
    seen[$m]=1
    if ! is_loadable "$m"; then
        [[ -n $(modfile "$m") ]] || echo "initramfs: note: module $m not found in $moddir, assuming built-in" >&2
        return 0
    fi
    for d in $(moddeps "$m"); do
        visit "$d"
    done
    order+=("$m")
}

unpack_module() {
    case $1 in
        *.ko) cp "$1" "$2" ;;
        *.ko.xz) xz -dc "$1" >"$2" ;;
        *.ko.zst) zstd -q -dc "$1" >"$2" ;;
        *.ko.gz) gzip -dc "$1" >"$2" ;;
        *) die "don't know how to unpack module file $1" ;;
    esac
}

initramfs_key() {
    local m f
    {
        echo "kver=$kver"
        for m in "$@"; do
            f=$(modfile "$m")
            echo "mod $m $(stat -c '%s %Y' "$f") $f"
        done
        stat -c 'busybox %s %Y' "$busybox"
        cat "${key_files[@]}"
    } | sha256sum | cut -d' ' -f1
}

reuse_if_current() {
    if [[ -f $1 && -f $1.stamp && $(cat "$1.stamp") == "$2" ]]; then
        echo "$1"
        exit 0
    fi
}

pack_initramfs() {
    local root=$1 out=$2
    # /dev/console must exist before devtmpfs is mounted, or init starts without stdio.
    # (mknod needs root; the VM tests run as root anyway, as QEMU shares the host root.)
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
        gzip -9n >"$out.tmp"
    mv "$out.tmp" "$out"
}
