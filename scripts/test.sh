#!/usr/bin/env bash
# The project's one test command (README and .ci/run both call it).
# Installs kvsim with its dev extra into the current Python and the servers the tests
# start (scripts/install_services.sh), then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k golden`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --disable-pip-version-check -q -e ".[dev]"
bash scripts/install_services.sh
"$PY" -m pytest "$@"
