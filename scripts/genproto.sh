#!/usr/bin/env bash
# Regenerate numfed/v1/*_pb2.py, *_pb2_grpc.py and .pyi stubs from protos/numfed/v1/*.proto.
# Usage: scripts/genproto.sh [OUT_DIR]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=${1:-.}
deps=build/protodeps
"$PY" scripts/protodeps.py "$deps"
mkdir -p "$out"
"$PY" -m grpc_tools.protoc -I protos -I "$deps" \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  protos/numfed/v1/*.proto
touch "$out/numfed/v1/py.typed"
