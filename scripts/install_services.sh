#!/usr/bin/env bash
# Install the servers the tests start themselves (on free loopback ports): Redis and
# PostgreSQL, and the headless browser of the advisor page's test (Chromium and its
# WebDriver), from Debian's packages with apt-get.
# Idempotent and quick when they are already there. Needs root (or sudo) for apt-get:
# without either it says so and exits 1 (scripts/test.sh then runs the tests without
# them; those tests skip with the reason).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
need=()
command -v redis-server >/dev/null || need+=(redis-server)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  need+=(postgresql)
fi
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
  echo "install_services: ${need[*]} missing, and installing needs root or password-less" \
       "sudo (apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing with apt-get: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && \
       $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
# the packages' own services are not needed: tests start their own servers
for svc in redis-server postgresql; do
  (command -v systemctl >/dev/null && $SUDO systemctl disable --now "$svc") \
    >/dev/null 2>&1 || true
done
