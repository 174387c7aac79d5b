#!/usr/bin/env bash
# Install what scripts/vm-test.sh needs on a Debian 12 machine: QEMU (system emulator, which
# brings qemu-storage-daemon via qemu-system-common), the Debian guest kernel, a static busybox
# for the initramfs, and fio; and what the RBD tests need: a one-node Ceph cluster's daemons
# (scripts/ceph/cluster.sh) and librbd/librados with their headers (spinblk-rbd loads the
# libraries at run time; its header check compiles against them). Idempotent: only missing
# packages are installed, and apt-get update runs at most once (and only when something is
# missing). Run as root.
#
# Note: on these machines installing qemu-system-x86 (7.2) removes the preinstalled qemu-utils
# (10.0), so qemu-img goes away; the test scripts only use truncate for raw images.
set -euo pipefail

packages=(qemu-system-x86 linux-image-amd64 busybox-static fio
    ceph-mon ceph-osd ceph-mgr ceph-common librbd-dev)

if [[ $(id -u) != 0 ]]; then
    echo "install-deps: must run as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# is_installed PKG: dpkg knows it as fully installed ("install ok installed").
is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

missing=()
for p in "${packages[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    echo "install-deps: all present: ${packages[*]}"
else
    echo "install-deps: installing: ${missing[*]}"
    apt-get update
    # With recommends, as on the machines the tests were developed on (qemu-block-extra etc.).
    # -o Dpkg::Options: keep existing config files without asking.
    apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
fi

# Sanity checks: the things vm-test.sh and the RBD tests actually run.
status=0
for tool in qemu-system-x86_64 qemu-storage-daemon busybox fio ceph-mon ceph-osd ceph-mgr ceph rbd; do
    if ! command -v "$tool" >/dev/null; then
        echo "install-deps: $tool still missing" >&2
        status=1
    fi
done
if ! compgen -G '/boot/vmlinuz-*' >/dev/null; then
    echo "install-deps: no guest kernel in /boot (linux-image-amd64)" >&2
    status=1
fi
for header in /usr/include/rbd/librbd.h /usr/include/rados/librados.h; do
    if [[ ! -e $header ]]; then
        echo "install-deps: $header missing (librbd-dev, librados-dev)" >&2
        status=1
    fi
done
exit "$status"
