#!/usr/bin/env bash
# Installs the `standardwebhooks` package (PyPI), pinned in interop-tests/webhooks-requirements.txt,
# into a project-local virtual environment (default $HOME/.cache/keyplane-py-webhooks;
# KEYPLANE_WEBHOOKS_VENV moves it), for the webhook receiver the tests run
# (interop-tests/webhook_receiver.py, crates/keyplane/tests/it/webhooks.rs). Python comes from
# Debian's packages when absent. Idempotent. Needs root for apt (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KEYPLANE_WEBHOOKS_VENV:-$HOME/.cache/keyplane-py-webhooks}"
reqs="interop-tests/webhooks-requirements.txt"
stamp="$venv/.keyplane-webhooks-requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$reqs" "$stamp"; then
  echo "standardwebhooks is ready"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "== installing python3 and its venv module from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
echo "== installing standardwebhooks into $venv (from PyPI)"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
"$venv/bin/python" -c 'import standardwebhooks.webhooks'
cp "$reqs" "$stamp"
echo "standardwebhooks is ready"
