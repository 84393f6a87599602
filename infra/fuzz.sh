#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document with schemathesis (`--checks all`) against the
# local binary: every answer must be documented and match its schema, every schema-valid request
# accepted (but for the rules infra/schemathesis.toml names), every schema-invalid one refused,
# no 500. Usage: infra/fuzz.sh VENV BINARY. Fails when schemathesis reports any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(cd "$1" && pwd)
bin=$(realpath "$2")
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

admin="fuzz-admin-key-0123456789"
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
TOUCHPOINT_API_KEYS="$admin=1:admin" TOUCHPOINT_LOG=warn \
  "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" > "$work/server.log" 2>&1 &
pid=$!
# Seed (in Python: no curl needed): a touchpoint whose receiver the SSRF guard refuses (so its
# dispatch fails fast and final), a space, a campaign reference and a dispatch with a batch.
seed=$("$venv/bin/python" - "$base" "$admin" <<'PY'
import json, sys, time, urllib.request, urllib.error

base, key = sys.argv[1], sys.argv[2]

def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)

for _ in range(100):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1)
        break
    except (urllib.error.URLError, OSError):
        time.sleep(0.1)
tp = call("POST", "/v1/touchpoints", {
    "name": "fuzz", "kind": "benefit", "url": "http://127.0.0.1:9/touch",
    "userAttributes": [{"attribute": "mobile", "displayName": "Mobile"}],
    "templateParams": [
        {"identifier": "title", "displayName": "Title", "type": "text"},
        {"identifier": "jump", "displayName": "Jump", "type": "enum",
         "enum": {"source": "manual", "options": [{"code": "HOME", "name": "Home"}]}}]})["id"]
call("PUT", f"/v1/touchpoints/{tp}/spaces", {"spaceIds": ["space-a"]})
call("PUT", f"/v1/touchpoints/{tp}/campaigns/cmp-fuzz", {"state": "ended", "name": "fuzz"})
call("POST", "/v1/dispatches", {
    "dispatchId": "d-fuzz", "projectId": 1, "spaceId": "space-a", "campaignId": "cmp-fuzz",
    "touchpointId": tp, "templateValues": {"title": "hi", "jump": "HOME"},
    "users": [{"gid": 1, "attributes": {"mobile": "13800000000"}}]})
for _ in range(100):
    batches = call("GET", "/v1/dispatches/d-fuzz")["batches"]
    if batches:
        print(tp, batches[0]["orderNo"])
        break
    time.sleep(0.1)
else:
    sys.exit("the seeded dispatch was never opened")
PY
)
read -r tp order <<< "$seed"

cd "$work"
FUZZ_TOUCHPOINT_ID=$tp FUZZ_DISPATCH_ID=d-fuzz FUZZ_ORDER_NO=$order \
  "$venv/bin/schemathesis" --config-file "$OLDPWD/infra/schemathesis.toml" run "$base/v1/openapi.json" \
  -H "Authorization: Bearer $admin" --checks all --max-examples "${FUZZ_EXAMPLES:-40}" \
  --seed "${FUZZ_SEED:-20261130}" --no-color
