#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv from the lock; sourced by the
# other scripts. Installs exactly locks/${KBUNDLE_LOCK:-dev}.txt (pinned, hash-checked; refreshed by
# scripts/lock.sh) plus kbundle itself (editable), and re-installs only when the lock or
# pyproject.toml changed. A flock on .venv.lock lets two scripts start together on a fresh clone:
# the second waits for the first's install instead of racing it. Any failure stops the caller.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
LOCK="$ROOT/locks/${KBUNDLE_LOCK:-dev}.txt"
quiet() {  # run a command; show its output only when it fails (and then fail)
  local log
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; echo "kbundle: failed: $*" >&2; return 1; }
  rm -f "$log"
}
exec 9>"$ROOT/.venv.lock"
flock 9
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.kbundle-install"
want="$(cat "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1) lock=$LOCK"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "kbundle: installing $LOCK into $VENV ..." >&2
  rm -f "$stamp"
  quiet "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$LOCK"
  quiet "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  "$VENV/bin/python" "$ROOT/scripts/lockcheck.py" "$LOCK" --prune
  "$VENV/bin/python" -c "import kbundle.predictors, kserve, onnxruntime"
  echo "$want" >"$stamp"
fi
exec 9>&-
export PATH="$VENV/bin:$PATH"
