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
cargo test --workspace --locked
