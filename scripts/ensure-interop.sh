#!/usr/bin/env bash
# Installs the third-party OAuth 2.0 clients the interoperability tests drive keyplane with
# (crates/keyplane/tests/it/pkjwt_interop.rs), when missing:
#   - openid-client (npm), pinned in interop-tests/package-lock.json, with `npm ci`;
#   - Authlib (PyPI), pinned in interop-tests/requirements.txt, into a project-local virtual
#     environment (default $HOME/.cache/keyplane-py-interop; KEYPLANE_INTEROP_VENV moves it).
# Node and Python come from Debian's packages when absent. Idempotent: returns at once when both
# are in place at the pinned versions. Needs root for apt (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if ! [ -f interop-tests/node_modules/openid-client/package.json ] \
  || ! cmp -s interop-tests/package-lock.json interop-tests/node_modules/.package-lock.json.keyplane 2>/dev/null; then
  echo "== npm ci in interop-tests/"
  (cd interop-tests && npm ci --no-audit --no-fund --ignore-scripts >/dev/null)
  cp interop-tests/package-lock.json interop-tests/node_modules/.package-lock.json.keyplane
fi

venv="${KEYPLANE_INTEROP_VENV:-$HOME/.cache/keyplane-py-interop}"
reqs="interop-tests/requirements.txt"
stamp="$venv/.keyplane-interop-requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$reqs" "$stamp"; then
  echo "openid-client and Authlib are ready"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "== installing python3 and its venv module from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
echo "== installing Authlib into $venv (from PyPI)"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
"$venv/bin/python" -c 'import authlib, cryptography, requests'
cp "$reqs" "$stamp"
echo "openid-client and Authlib are ready"
