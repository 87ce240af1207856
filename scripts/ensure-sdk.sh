#!/usr/bin/env bash
# Installs what the TypeScript SDK's test (crates/keyplane/tests/it/sdk.rs) needs: node and npm
# (from Debian's packages when absent), and the SDK's dependencies pinned in
# sdk/typescript/package-lock.json (openapi-fetch, openapi-typescript, typescript) with `npm ci`.
# Idempotent: returns at once when node_modules matches the lock file. Needs root for apt (CI
# runs as root).
set -euo pipefail
cd "$(dirname "$0")/../sdk/typescript"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
stamp=node_modules/.package-lock.json.keyplane
if [ -f node_modules/openapi-fetch/package.json ] && [ -f node_modules/typescript/package.json ] \
  && [ -f node_modules/openapi-typescript/package.json ] && cmp -s package-lock.json "$stamp"; then
  exit 0
fi
echo "== npm ci in sdk/typescript/"
npm ci --no-audit --no-fund --ignore-scripts >/dev/null
cp package-lock.json "$stamp"
echo "the SDK's dependencies are ready"
