#!/usr/bin/env bash
# Regenerate kvsim's gRPC Python modules from kvsim/server/proto/*.proto.
# Needs grpcio-tools (in the dev extra). Writes, next to each .proto:
#   <name>_pb2.py, <name>_pb2.pyi (messages) and <name>_pb2_grpc.py (stubs, servicers).
# protoc emits top-level imports (`import meta_service_pb2`); they are rewritten to
# package-relative ones so the modules work as kvsim.server.proto.*.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PROTO_DIR=kvsim/server/proto
"$PY" -m grpc_tools.protoc \
  -I "$PROTO_DIR" \
  --python_out="$PROTO_DIR" \
  --pyi_out="$PROTO_DIR" \
  --grpc_python_out="$PROTO_DIR" \
  "$PROTO_DIR"/meta_service.proto "$PROTO_DIR"/admin_service.proto \
  "$PROTO_DIR"/debug_service.proto
for f in "$PROTO_DIR"/*_pb2_grpc.py; do
  sed -i -E 's/^import ([a-z_]+_pb2) as /from . import \1 as /' "$f"
done
echo "regenerated: $(ls "$PROTO_DIR"/*_pb2*.py* | tr '\n' ' ')"
