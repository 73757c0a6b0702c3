#!/usr/bin/env bash
# The whole test suite, in its own environment: `bash scripts/test.sh [pytest args]`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
bash "$ROOT/scripts/system-deps.sh"
kbundle samples build
exec python -m pytest "$@"
