#!/usr/bin/env bash
# The whole test suite, in its own environment: `bash scripts/test.sh [pytest args]`.
# System packages first (buildah, debootstrap, prometheus: installed when missing and root), then
# the locked venv (scripts/env.sh), the sample models, and pytest (container tests included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/system-deps.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
kbundle samples build
exec python -m pytest "$@"
