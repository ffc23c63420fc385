#!/usr/bin/env bash
# Install the servers the tests start themselves (on free loopback ports): Redis and
# PostgreSQL.
# Idempotent and quick when they are already there. Needs root (or sudo) for apt.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
need=()
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && \
         $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
  # the package's own service is not needed: tests start their own servers
  (command -v systemctl >/dev/null && $SUDO systemctl disable --now redis-server) \
    >/dev/null 2>&1 || true
fi
# PostgreSQL server binaries (the optimizer's shared-study test runs its own cluster)
bash "$(dirname "$0")/install_postgres.sh"
