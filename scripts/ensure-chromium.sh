#!/usr/bin/env bash
# Installs what the console's browser tests need, when missing: Debian's `chromium` (driven
# headless by the tests) and `playwright-core` from console-tests/package-lock.json. Never
# downloads a browser build of its own (no `playwright install`). Idempotent; needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -x /usr/bin/chromium ]; then
  echo "== installing chromium from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
  echo "== installing nodejs and npm from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if ! [ -d console-tests/node_modules/playwright-core ]; then
  echo "== npm ci in console-tests/"
  (cd console-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --ignore-scripts)
fi
echo "chromium and playwright-core are ready"
