#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md: release builds, then the harness (which starts its
# receiver and the local service on 127.0.0.1 and stops them), the Lambdas' size and cold
# start, and the AWS request counts (the metered test against moto). Extra arguments go to the
# harness's delivery runs, e.g. `bash infra/bench.sh --users 50000 --batches 500`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash infra/tools.sh)
cargo build --release --locked -p touchpoint-local -p touchpoint-tests --bin touchpoint --bin touchpoint-bench
PATH="$venv/bin:$PATH" cargo lambda build --profile lambda --x86-64 --locked \
  -p touchpoint-admin-api-lambda -p touchpoint-dispatcher-lambda -p touchpoint-receipt-poller-lambda
echo "## $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "### Receiver answering at once"
./target/release/touchpoint-bench "$@"
echo
echo "### Receiver with 50 ms latency, batch 500: default concurrency (4) and 16"
./target/release/touchpoint-bench --users 50000 --batches 500 --latency-ms 50 --no-service
./target/release/touchpoint-bench --users 50000 --batches 500 --latency-ms 50 --concurrency 16 --no-service
echo
echo "### Lambdas: size and cold start (a local Lambda Runtime API, AWS calls answered locally)"
./target/release/touchpoint-bench --lambdas target/lambda
echo
echo "### AWS requests and estimated cost (metered SDK clients against moto)"
read -r moto_pid moto_port < <(MOTO_WATCH_PID=$$ bash infra/moto.sh "$venv" target/moto-bench.log)
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" \
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_SESSION_TOKEN=test \
AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  cargo test --locked -p touchpoint-tests --test suite aws_requests -- --include-ignored --nocapture 2>&1 \
  | sed -n '/users at batch/,/estimated cost/p'
