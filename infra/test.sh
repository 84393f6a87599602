#!/usr/bin/env bash
# The whole test suite: formatting, lints with warnings denied, and every test of the workspace
# (domain unit tests, the admin API through its Router, the SQLite store, end-to-end tests that
# start the real binary, and the AWS adapters and Lambda handlers against a local moto server,
# which this script installs, starts and stops), then the SAM template's checks and a build of
# the three Lambdas for x86_64 with cargo lambda, and the admin console's browser tests in
# headless Chromium (installed from Debian's packages by infra/chromium.sh, in the background
# while the workspace compiles), and schemathesis fuzzing the local binary from its own OpenAPI
# document (infra/fuzz.sh) (the unoptimized `lambda-check` profile: it
# proves the cross-build in two minutes; `infra/bench.sh` builds the size-optimized deploy
# profile and reports its sizes).
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p target
bash infra/chromium.sh > target/chromium-install.log 2>&1 &
chromium_pid=$!
moto_pid=
log=$(mktemp)
# Whatever fails, nothing is left running: the Chromium install, moto.
cleanup() {
  kill "$chromium_pid" 2>/dev/null || true
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

echo "== tools"
venv=$(bash infra/tools.sh)

echo "== shellcheck"
"$venv/bin/shellcheck" infra/*.sh .ci/run

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== moto server"
# Stopped by the trap above, or by itself if this script is killed outright.
read -r moto_pid moto_port < <(MOTO_WATCH_PID=$$ bash infra/moto.sh "$venv" target/moto.log)
echo "moto on 127.0.0.1:$moto_port"
# The AWS environment of every test that talks to moto: dummy credentials, no metadata service.
aws_env=(
  AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_SESSION_TOKEN=test
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
)

echo "== tests"
env "${aws_env[@]}" \
  cargo test --workspace --locked -- --include-ignored --skip scenario_ --skip adversarial:: 2>&1 \
  | tee "$log"
echo "== delivery scenarios (RELIABILITY.md), side by side"
# Eight scenarios at a time: they mostly wait (compressed time), but each starts a moto server
# of its own (MOTO_PYTHON, infra/moto_server.py; stopped when it ends, so that scenarios running
# side by side do not queue behind each other in one Python process), and the receivers' slot
# leases add requests of their own: sixteen at once overloaded two cores.
env MOTO_PYTHON="$venv/bin/python" "${aws_env[@]}" \
  cargo test --locked -p touchpoint-tests --test suite -- --include-ignored --nocapture \
  --test-threads 8 scenario_ 2>&1 | tee -a "$log"
echo "== adversarial suite (RELIABILITY.md), on its own: it loads the machine and measures time"
env "${aws_env[@]}" \
  cargo test --locked -p touchpoint-tests --test suite -- --include-ignored adversarial:: 2>&1 \
  | tee -a "$log"
# One closing line for the whole run (cargo prints one per test binary, the last being doc-tests).
cargo_summary=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log")
echo "cargo tests: $cargo_summary"

echo "== browser tests (admin console, headless Chromium)"
if ! wait "$chromium_pid"; then
  cat target/chromium-install.log
  echo "could not install Chromium" >&2
  exit 1
fi
tail -n 1 target/chromium-install.log
# The same binary the end-to-end tests just ran (built with the workspace's features).
TOUCHPOINT_BIN="$PWD/target/debug/touchpoint-under-test" bash infra/browser.sh 2>&1 | tee -a "$log"
summary=$(awk '/^test result:/ { p += $4; f += $6 } /^# pass / { p += $3 } /^# fail / { f += $3 }
  END { printf "tests: %d passed, %d failed (cargo and browser)\n", p, f }' "$log")
echo "$summary"

echo "== API fuzzing (schemathesis from the served OpenAPI document, --checks all)"
# Against the same binary; fails on any failure schemathesis reports.
bash infra/fuzz.sh "$venv" target/debug/touchpoint-under-test 2>&1 | tail -n 25

echo "== SAM template"
# `--lint` runs cfn-lint (the pinned one in the venv) over the transformed template.
PATH="$venv/bin:$PATH" AWS_DEFAULT_REGION=us-east-1 sam validate --lint --template-file template.yaml

echo "== Lambda build check (cargo lambda, x86_64, lambda-check profile)"
PATH="$venv/bin:$PATH" cargo lambda build --profile lambda-check --x86-64 --locked \
  -p touchpoint-admin-api-lambda -p touchpoint-dispatcher-lambda -p touchpoint-receipt-poller-lambda
for f in touchpoint-admin-api touchpoint-dispatcher touchpoint-receipt-poller; do
  printf '%-28s %s bytes\n' "$f" "$(stat -c %s "target/lambda/$f/bootstrap")"
done

# The test count again, as the last line.
echo "$summary"
