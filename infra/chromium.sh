#!/usr/bin/env bash
# Installs what the console's browser tests need from Debian's packages, if missing: Chromium
# (/usr/bin/chromium, driven by playwright-core) and a CJK font so the Chinese screenshots show
# characters. Runs as root, or through sudo when it can ask no password.
set -euo pipefail
packages=(chromium fonts-wqy-microhei)
if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi 'wqy'; then
  exit 0
fi
as_root=()
if [ "$(id -u)" != 0 ]; then
  as_root=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y -q "${packages[@]}"; then
  # Stale or missing package lists on a fresh machine.
  "${as_root[@]}" apt-get update -q
  "${as_root[@]}" apt-get install -y -q "${packages[@]}"
fi
/usr/bin/chromium --version
