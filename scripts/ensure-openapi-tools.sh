#!/usr/bin/env bash
# Installs the OpenAPI tools the contract tests and scripts/schemathesis.sh use, from PyPI, into a
# project-local virtual environment (default $HOME/.cache/keyplane-py; KEYPLANE_PY_VENV moves it):
#   openapi-spec-validator  validates openapi.json as OpenAPI 3.1
#   openapi-python-client   generates a Python client from it (the tests use that client live)
#   schemathesis            property-based testing of a live server against the document
# Versions are pinned in scripts/openapi-tools.txt. Idempotent: when the environment already
# holds exactly that list it returns at once. Needs python3 (3.9+) with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KEYPLANE_PY_VENV:-$HOME/.cache/keyplane-py}"
reqs="scripts/openapi-tools.txt"
stamp="$venv/.keyplane-requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$reqs" "$stamp" \
  && [ -x "$venv/bin/openapi-spec-validator" ] && [ -x "$venv/bin/openapi-python-client" ] \
  && [ -x "$venv/bin/schemathesis" ]; then
  exit 0
fi
echo "== installing the OpenAPI tools into $venv (from PyPI)"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
"$venv/bin/openapi-spec-validator" --help >/dev/null
"$venv/bin/openapi-python-client" --version >/dev/null
"$venv/bin/schemathesis" --version >/dev/null
cp "$reqs" "$stamp"
echo "the OpenAPI tools are ready in $venv"
