#!/usr/bin/env bash
# Runs every spinblk test: lint, unit and libblkio integration tests (cargo), then the Linux
# guest end-to-end tests under QEMU. Installs what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step "dependencies"
bash scripts/install-deps.sh

step "SPDK's JSON-RPC client (PyPI spdk==26.9 in target/venv)"
bash scripts/rpc/venv.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --release --locked

step "unit and integration tests"
cargo test --workspace --locked

step "fuzzing (every cargo-fuzz target for 60 s from the seed corpus; fails on any crash)"
bash scripts/fuzz.sh 60

step "VM end-to-end tests (Linux guest, fio verify)"
vm_failed=0
vm_passed=0
run_vm() {
    echo "--- $*"
    if bash "$@"; then
        vm_passed=$((vm_passed + 1))
    else
        vm_failed=$((vm_failed + 1))
        echo "VM test FAILED: $*"
    fi
}
run_vm scripts/vm-test.sh --num-queues 2 --cpus 0
run_vm scripts/vm-test.sh --num-queues 2 --cpus 0-1
run_vm scripts/vm-test.sh --num-queues 1 --block-size 4096 --serial spinblk-4k
run_vm scripts/vm-test.sh --readonly --num-queues 1
run_vm scripts/vm-test.sh --bdev file
run_vm scripts/vm-test.sh --bdev file --no-write-cache --size 64M
# A Ceph RBD image in a throwaway one-node cluster; SIGTERM must flush it (checked by rbd export).
run_vm scripts/vm-test.sh --bdev rbd --size 128M
# The disk made by JSON-RPC (SPDK's client) after spinblk started with no disk.
run_vm scripts/vm-test.sh --rpc --bdev file --no-write-cache --size 128M
# Online resize under a running guest (disk made by RPC): bdev_null_resize, truncate +
# bdev_aio_rescan, spinblk_bdev_resize; the guest must see each new size within 2 s and verify
# I/O in the new area; each step's latency is printed.
run_vm scripts/vm-test.sh --resize --bdev null
run_vm scripts/vm-test.sh --resize --bdev file
run_vm scripts/vm-test.sh --resize --bdev malloc --resize-steps 1
# Restarts under a running guest: SIGKILL and SIGTERM, 5 times each, fio must verify clean.
run_vm scripts/vm-test.sh --restart kill --restarts 5
run_vm scripts/vm-test.sh --restart term --restarts 5
# Live migration between two QEMUs with a guest writing, verifying and reading into memory:
# two controllers on one shared bdev, one controller serving both QEMUs, and the negative
# control (dirty logging switched off for the test: the memory check must fail).
run_vm scripts/migrate-test.sh
run_vm scripts/migrate-test.sh --one-socket
run_vm scripts/migrate-test.sh --negative-control
# spinblk --nvme inside a guest with an emulated NVMe controller.
run_vm scripts/nvme-vm-test.sh
echo "vm-tests: ${vm_passed} passed, ${vm_failed} failed"
[ "$vm_failed" -eq 0 ]
