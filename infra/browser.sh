#!/usr/bin/env bash
# The console's browser tests: headless Chromium (infra/chromium.sh) driven by playwright-core
# (pinned in tests/browser/package-lock.json) against the real local binary on a free port.
# Screenshots are left in target/browser-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
# infra/test.sh passes the binary its cargo tests built; alone, this builds the local binary.
if [ -z "${TOUCHPOINT_BIN:-}" ]; then
  cargo build --locked -p touchpoint-local
  export TOUCHPOINT_BIN="$PWD/target/debug/touchpoint"
fi
cd tests/browser
npm ci --no-audit --no-fund --loglevel=error
npm test
echo "screenshots: $(cd ../.. && pwd)/target/browser-artifacts/"
ls ../../target/browser-artifacts/
