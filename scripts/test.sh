#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the
# tests need (idempotent), then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The load tool's short forms, on the debug build the tests used: every k6
# scenario, every fault under load, and the serving figures; a broken run
# fails the suite (figures are not judged here; see loadtest/README.md).
cargo build --locked -p regcache -p loadtest
loadtest=${CARGO_TARGET_DIR:-target}/debug/loadtest
for command in bench faults serve; do
    "$loadtest" "$command" --smoke
done
PYTHONPATH=/opt/regcache-test-deps/chart-tools python3 helm/tests/test_chart.py
scripts/fuzz.sh
