#!/usr/bin/env bash
# The main job, in its own environment: build the sample models, then serve one with the predictor.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
kbundle samples build
exec kbundle serve "$(python -c 'from kbundle.samples import default_models_dir; print(default_models_dir())')/digits/v1" \
  --model_name digits --http_port "${HTTP_PORT:-8080}" --grpc_port "${GRPC_PORT:-8081}"
