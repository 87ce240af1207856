#!/usr/bin/env bash
# Installs nginx from Debian's packages when it is missing (the forward-auth test needs a real
# one). Idempotent; needs root (CI runs as root) and the Debian mirror.
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  exit 0
fi
echo "== installing nginx from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx >/dev/null
# The package starts a system nginx on port 80; the tests run their own.
if [ -f /run/nginx.pid ]; then
  nginx -s stop 2>/dev/null || true
fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
