#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS
# each, default 60), starting from its seed corpus in fuzz/corpus/<target>/,
# and fails if any target finds a crash (saved under fuzz/artifacts/).
# There is only a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use
# the nightly-only flags (sanitizer, coverage) it builds with.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fuzz build
passed=0
failed=0
mkdir -p target/logs
for target in $(cargo fuzz list); do
    # New inputs go to a scratch corpus under target/, so the committed
    # seeds stay as they are.
    work="target/corpus/$target"
    log="target/logs/$target.log"
    mkdir -p "$work"
    echo "fuzzing $target for ${seconds}s"
    if cargo fuzz run "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        passed=$((passed + 1))
        grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
    else
        failed=$((failed + 1))
        tail -n 60 "$log"
        echo "fuzz target $target failed (full log: fuzz/$log)"
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
