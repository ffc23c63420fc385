#!/usr/bin/env bash
# The project's one test command (README and .ci/run both call it).
#
# 1. installs kvsim with its dev extra into the current Python, at the exact versions of
#    constraints.txt (so a new release of a dev tool cannot change the result);
# 2. installs the servers some tests start themselves (Redis, PostgreSQL) with apt-get
#    (scripts/install_services.sh: needs root or sudo). Without them, or with
#    KVSIM_SKIP_SERVICES=1, those tests skip and say why; in CI (CI=true) they must run;
# 3. runs pytest. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k golden`.
#
# The replay contract's tests also read ../shared/traces/mooncake_conversation.jsonl
# (beside the clone); without it they skip and name the missing file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
if [ "${KVSIM_SKIP_SERVICES:-0}" = "1" ]; then
  echo "KVSIM_SKIP_SERVICES=1: not installing Redis/PostgreSQL; their tests skip" >&2
elif bash scripts/install_services.sh; then
  export KVSIM_REQUIRE_SERVICES=1  # installed: a test that cannot start one must fail
else
  echo "warning: Redis/PostgreSQL could not be installed (see above); their tests skip" >&2
fi
if [ "${CI:-}" = "true" ]; then export KVSIM_REQUIRE_SERVICES=1; fi
"$PY" -m pytest "$@"
