#!/usr/bin/env bash
# The main job, in its own environment: run the sample InferenceService locally (no cluster).
# `kbundle up` builds the sample models when needed, fetches them with our storage-init, starts the
# predictor and the transformer as KServe would, and serves V2 REST on :8080 and gRPC on :8081.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec kbundle up "${1:-inferenceservices/digits.yaml}" --port "${HTTP_PORT:-8080}" --grpc-port "${GRPC_PORT:-8081}"
