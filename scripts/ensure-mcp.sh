#!/usr/bin/env bash
# Installs the official MCP Python SDK (mcp, PyPI; pinned in examples/mcp-server/requirements.txt)
# into a project-local virtual environment (default $HOME/.cache/keyplane-py-mcp;
# KEYPLANE_MCP_VENV moves it), for the example MCP server (examples/mcp-server/server.py) and the
# end-to-end test that drives the SDK's client through keyplane (crates/keyplane/tests/it/mcp.rs,
# interop-tests/mcp_client.py). Python comes from Debian's packages when absent. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KEYPLANE_MCP_VENV:-$HOME/.cache/keyplane-py-mcp}"
reqs="examples/mcp-server/requirements.txt"
stamp="$venv/.keyplane-mcp-requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$reqs" "$stamp"; then
  echo "the MCP SDK is ready"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "== installing python3 and its venv module from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
echo "== installing the MCP SDK into $venv (from PyPI)"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
"$venv/bin/python" -c 'import mcp, uvicorn, httpx2'
cp "$reqs" "$stamp"
