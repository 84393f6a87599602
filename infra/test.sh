#!/usr/bin/env bash
# The whole test suite: formatting, lints with warnings denied, and every test of the workspace
# (domain unit tests, the admin API through its Router, the SQLite store, and end-to-end tests
# that start the real binary). Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last being doc-tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
