#!/usr/bin/env bash
# Build the harness that runs Tair KVCM's own integration tests, Python client and
# connector parsing, unedited, against `kvsim serve --admin-auth none` (issue 15).
#
#   bash scripts/kvcm_upstream/setup.sh [HARNESS_DIR]    # default: ../kvcm_up
#
# It fetches nothing from upstream: KVCM's files are not part of kvsim (their code stays
# out of this repository). Copy them yourself from github.com/alibaba/tair-kvcache (the
# admin and debug HTTP tests are indexed only in the fork zishano/tair-kvcache, commit
# 839b833), keeping their paths, into HARNESS_DIR:
#
#   integration_test/meta_service/{meta_interface_cases,http_interface_test,grpc_interface_test}.py
#   integration_test/admin_service/{admin_interface_cases,http_interface_test,grpc_interface_test}.py
#   integration_test/debug_service/{debug_interface_cases,http_interface_test}.py
#   integration_test/reclaimer/reclaiming_test.py
#   kv_cache_manager/protocol/protobuf/{meta_service,admin_service,debug_service}.proto
#     -> HARNESS_DIR/proto/kv_cache_manager/protocol/protobuf/ (stubs generated below)
#   kv_cache_manager/py_connector/common/{manager_client,logger}.py
#   client_checks/connector_parsing.py: the connectors' parse_hf3fs_configs bodies
#     (py_connector/vllm/v1_connector.py, py_connector/sglang/connector.py) in two small
#     classes VllmParser / SglangParser (VllmParser also has get_self_uris)
#
# What this script does: a throwaway venv in HARNESS_DIR/venv with the client side's
# environment (KVCM's gRPC tests call MessageToDict(including_default_value_fields=...),
# which protobuf >= 5.26 removed: protobuf 4.25 + grpcio 1.62 there; kvsim itself keeps
# running on the machine's Python), links our own testlib shim and client checks, and
# generates Python stubs from the .proto files if they are there. Then:
#
#   cd HARNESS_DIR && PYTHONPATH=.:client_checks KVSIM_PYTHON=python3 \
#     venv/bin/python -m pytest integration_test/admin_service/grpc_interface_test.py
#   (same for every suite; client_checks/test_client_checks.py for the client)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${1:-$HERE/../../../kvcm_up}"
mkdir -p "$DIR/client_checks" "$DIR/integration_test" "$DIR/proto"
DIR="$(cd "$DIR" && pwd)"
if [ ! -x "$DIR/venv/bin/python" ]; then
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check \
    grpcio==1.62.2 grpcio-tools==1.62.2 protobuf==4.25.3 pytest requests
fi
ln -sfn "$HERE/testlib" "$DIR/testlib"
ln -sfn ../testlib "$DIR/integration_test/testlib"  # the reclaimer test imports it there
ln -sfn "$HERE/client_checks/test_client_checks.py" "$DIR/client_checks/test_client_checks.py"
for d in "$DIR"/integration_test "$DIR"/integration_test/*/; do
  [ -d "$d" ] && touch "$d/__init__.py"
done
protos=$(cd "$DIR" && find proto -name '*.proto' | sort)
if [ -n "$protos" ]; then
  # shellcheck disable=SC2086
  (cd "$DIR" && venv/bin/python -m grpc_tools.protoc -Iproto --python_out=. \
     --grpc_python_out=. $protos)
fi
missing=0
for f in integration_test/meta_service/grpc_interface_test.py \
         integration_test/admin_service/grpc_interface_test.py \
         kv_cache_manager/py_connector/common/manager_client.py \
         client_checks/connector_parsing.py; do
  [ -f "$DIR/$f" ] || { echo "missing (copy it from upstream): $DIR/$f" >&2; missing=1; }
done
echo "harness in $DIR$([ $missing = 0 ] && echo ': ready')"
