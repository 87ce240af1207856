#!/usr/bin/env bash
# Installs PostgreSQL's client tools (pg_dump, pg_restore, psql) from Debian's packages when
# they are missing: the PostgreSQL backup test (crates/keyplane/tests/it/files.rs) dumps and
# restores a real database with them. Idempotent; needs root (CI runs as root) and the Debian
# mirror. pg_dump must be at least as new as the server it dumps; Debian's current
# postgresql-client is.
set -euo pipefail
if command -v pg_dump >/dev/null 2>&1 && command -v pg_restore >/dev/null 2>&1; then
  exit 0
fi
echo "== installing postgresql-client from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql-client >/dev/null
command -v pg_dump >/dev/null 2>&1 && command -v pg_restore >/dev/null 2>&1
