#!/usr/bin/env bash
# The benchmark suite in one command: `bash bench/run.sh [bench/run.py flags]`.
# Needs the project venv (scripts/env.sh) for the servers and a separate bench venv for
# perf_analyzer (bundled in tritonclient[all]==2.51.0, the last that runs on glibc 2.36) + matplotlib.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
bash "$ROOT/scripts/env.sh"
if [ ! -x "$BENCH_VENV/bin/perf_analyzer" ] || [ ! -x "$BENCH_VENV/bin/py-spy" ] || ! "$BENCH_VENV/bin/python" -c "import matplotlib, onnx" 2>/dev/null; then
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q "tritonclient[all]==2.51.0" nvidia-cuda-runtime-cu12 matplotlib onnx numpy py-spy
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
  echo "perf_analyzer needs libb64: apt-get install -y libb64-0d" >&2
  exit 1
fi
CUDART="$("$BENCH_VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))')"
export LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$BENCH_VENV/bin/python" "$ROOT/bench/run.py" --perf-analyzer "$BENCH_VENV/bin/perf_analyzer" "$@"
