#!/usr/bin/env bash
# Starts the moto server on a free loopback port and prints "PID PORT" once it answers
# (infra/moto_server.py: moto with DynamoDB transactions that back up only the items they name).
# It stops by itself when the process named by MOTO_WATCH_PID (if set) is gone.
set -euo pipefail
venv="$1"
log="${2:-/dev/null}"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/bin/python" "$(dirname "$0")/moto_server.py" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
    echo "$pid $port"
    exit 0
  fi
  sleep 0.2
done
kill "$pid" 2>/dev/null || true
echo "moto did not start; see $log" >&2
exit 1
