#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md: release builds, then the harness (which starts its
# receiver and the local service on 127.0.0.1 and stops them). Extra arguments go to the
# harness, e.g. `bash infra/bench.sh --users 50000 --batches 500`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p touchpoint-local -p touchpoint-tests --bin touchpoint --bin touchpoint-bench
echo "## $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "### Receiver answering at once"
./target/release/touchpoint-bench "$@"
echo
echo "### Receiver with 50 ms latency, batch 500: default concurrency (4) and 16"
./target/release/touchpoint-bench --users 50000 --batches 500 --latency-ms 50 --no-service
./target/release/touchpoint-bench --users 50000 --batches 500 --latency-ms 50 --concurrency 16 --no-service
