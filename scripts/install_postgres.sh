#!/usr/bin/env bash
# Install the PostgreSQL server binaries the optimizer's storage test starts itself (initdb
# + pg_ctl on a free loopback port in a temp dir; the package's own cluster is not used).
# Idempotent and quick when a server is already there. Needs root (or sudo) for apt.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then
  exit 0
fi
echo "installing: postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends postgresql >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && \
       $SUDO apt-get install -y -q --no-install-recommends postgresql >/dev/null; }
(command -v systemctl >/dev/null && $SUDO systemctl disable --now postgresql) \
  >/dev/null 2>&1 || true
