#!/usr/bin/env bash
# Builds and runs every fuzz target in fuzz/ (cargo-fuzz + libFuzzer) for SECONDS each
# (default 60), starting from the committed seed corpus, and fails if any target crashes,
# panics, hangs past the per-input timeout or leaks. Prints each target's execution count.
#
#   bash scripts/fuzz.sh [SECONDS]
#
# Needs only the stable toolchain and crates.io: cargo-fuzz is installed into ~/.cargo/bin
# when missing, and RUSTC_BOOTSTRAP=1 lets the stable compiler accept the -Z flags cargo-fuzz
# passes. Targets are built without a sanitizer (`-s none`; every protocol `unsafe` is guarded
# by the targets' own checks and guard pages) with debug assertions and overflow checks on.
# The corpus grows under target/fuzz-corpus/<target>/ (not committed); crash inputs land in
# target/fuzz-artifacts/<target>/ (see docs/fuzzing.md to reproduce and minimize them).
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGETS=(parse vhost_user)
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "fuzz: installing g++"
        apt-get install -y g++ >/dev/null || { apt-get update >/dev/null && apt-get install -y g++ >/dev/null; }
    fi
    command -v c++ >/dev/null || { echo "fuzz: FAIL: no C++ compiler (libFuzzer needs one)"; exit 1; }
fi

cd "$ROOT/fuzz"
echo "fuzz: building ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do
    cargo fuzz build -s none "$t"
done

failed=0
summary=()
for t in "${TARGETS[@]}"; do
    corpus="$ROOT/target/fuzz-corpus/$t"
    artifacts="$ROOT/target/fuzz-artifacts/$t"
    log="$ROOT/target/fuzz-$t.log"
    mkdir -p "$corpus" "$artifacts"
    extra=()
    [ -d "regressions/$t" ] && extra+=("regressions/$t")
    echo "fuzz: running $t for ${SECONDS_PER_TARGET}s"
    set +e
    cargo fuzz run -s none "$t" "$corpus" "corpus/$t" "${extra[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -timeout=60 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$rc" -ne 0 ] || [ -z "$execs" ] || [ "$execs" -eq 0 ]; then
        echo "fuzz: FAIL: $t (exit $rc, ${execs:-0} executions); from $log:"
        grep -E -A3 'panicked at|ERROR: libFuzzer|SUMMARY: |deadly signal|^Running: ' "$log" \
            | grep -v -E '^ +[0-9]+: |^ +at ' | head -40 || true
        ls -1 "$artifacts" 2>/dev/null | sed 's/^/fuzz:   artifact: /'
        failed=1
        summary+=("$t: FAILED after ${execs:-0} executions")
    else
        summary+=("$t: ${execs} executions in ${SECONDS_PER_TARGET}s (${rate:-?} exec/s), no crash")
    fi
done
for line in "${summary[@]}"; do
    echo "fuzz: $line"
done
exit "$failed"
