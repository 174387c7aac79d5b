#!/usr/bin/env bash
# Creates target/venv with SPDK's own JSON-RPC client from PyPI (spdk==26.9: pure Python, no
# dependencies; its `spdk-rpc` is SPDK's scripts/rpc.py). The RPC integration tests drive
# spinblk with it. Idempotent and safe to run concurrently (flock); prints the client's path.
# Installs python3-venv with apt when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/../.."

SPDK_VERSION=26.9
venv=${SPINBLK_VENV:-$PWD/target/venv}
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

want="spdk==$SPDK_VERSION"
if [[ -x $venv/bin/spdk-rpc ]] && "$venv/bin/python" -m pip show spdk 2>/dev/null | grep -qx "Version: $SPDK_VERSION"; then
    echo "$venv/bin/spdk-rpc"
    exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "rpc venv: installing python3-venv" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2; }
    else
        echo "rpc venv: python3 has no venv/ensurepip module; install python3-venv" >&2
        exit 1
    fi
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$want" >&2
"$venv/bin/spdk-rpc" --help >/dev/null
echo "$venv/bin/spdk-rpc"
