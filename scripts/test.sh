#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the
# tests need (idempotent), then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
PYTHONPATH=/opt/regcache-test-deps/chart-tools python3 helm/tests/test_chart.py
scripts/fuzz.sh
