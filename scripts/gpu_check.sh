#!/usr/bin/env bash
# kbundle GPU check: the torch engine on CUDA, end to end through the real predictor process
# (python -m kbundle.predictors) with tritonclient over REST and gRPC, numerics checked against
# the same model.pt2 served on CPU. Written for a ~10-minute run on a machine with one H100 whose image
# has python3 3.12 + CUDA torch + CPU onnxruntime, but no kserve/tritonclient and no network.
#
# Put this file in the repo as scripts/gpu_check.sh (or anywhere in the tree) and run it from the
# repository root, in two phases:
#
#   1. HERE (CPU box with PyPI):   bash scripts/gpu_check.sh prep
#        builds .gpu-wheels/ = cp312 manylinux wheels of everything the predictor + tritonclient
#        import that the GPU image lacks, plus kbundle's own wheel (~50 MiB; that machine
#        takes at most 64 MiB of extra files); git-ignored.
#      optional dry run of the harness on CPU with the project's .venv (no install step):
#        KB_DEVICE=cpu KB_SKIP_INSTALL=1 PY=.venv/bin/python bash scripts/gpu_check.sh
#
#   2. ON THE GPU machine, with .gpu-wheels/ copied beside the checkout:  bash scripts/gpu_check.sh
#                                  (allow it 8 minutes; from a session: the `run` tool with
#                                   carry [".gpu-wheels"], timeout_s 480; results come back in $OUT)
#        installs the wheels with `pip --target` (no venv: a venv made from the image's python,
#        itself a venv at /opt/torch/.venv, would not see its CUDA torch) and puts them on
#        PYTHONPATH, so the image's CUDA torch, numpy and onnxruntime are used as they are.
#        Results go to $OUT (else .gpu-out/): env.txt, check.log, results.json, server-*.log, pytest.txt,
#        and workers.md/.json in the workers and all modes (8 files: the most a device run returns).
#
# Why not take the project's .venv along: it is ~2 GB (CPU torch 2.13.0+cpu alone is 754 MB, the cap on
# extra files is 64 MiB), its interpreter is a symlink to a Python 3.11 absent there (the
# GPU image's python is 3.12), its compiled wheels are cp311, and its CPU torch would shadow the
# image's CUDA torch (torch.cuda.is_available() False, so every check would skip or fail).
set -euo pipefail

MODE="${1:-device}"
W=.gpu-wheels
[ -f pyproject.toml ] && grep -q '^name = "kbundle"' pyproject.toml \
  || { echo "run from the kbundle repository root" >&2; exit 2; }

if [ "$MODE" = prep ]; then
  PY="${PY:-python3}"
  rm -rf "$W" && mkdir -p "$W"
  # The closure of what the predictor and the test clients import, for CPython 3.12 / x86_64.
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    -d "$W" 'kserve==0.21.*' 'hpack>=4' 'tritonclient[grpc,http]>=2.40' 'orjson>=3.9' 'pyyaml>=6' \
    'prometheus-client>=0.17'
  # Already in the GPU image (KINDS.md lists them) and large: use the image's copies.
  # numpy 15 MiB, onnxruntime 27 MiB (CPU build; the torch path does not need a GPU one),
  # pillow, ml_dtypes, uvloop, aiohttp; setuptools would shadow the image's (torch inductor uses it).
  rm -f "$W"/onnxruntime-*.whl "$W"/numpy-*.whl "$W"/pillow-*.whl "$W"/ml_dtypes-*.whl \
        "$W"/uvloop-*.whl "$W"/aiohttp-*.whl "$W"/setuptools-*.whl \
        "$W"/pandas-*.whl "$W"/pytz-*.whl "$W"/tzdata-*.whl "$W"/python_dateutil-*.whl "$W"/six-*.whl
  # perf_analyzer for the `workers` mode (bench/workers.py): the bench venv's binary, stripped and
  # gzipped (20 -> 6 MiB), with the two libraries it links that the image lacks (libcudart 12, libb64).
  PA="${BENCH_VENV:-.bench-venv}/bin/perf_analyzer"
  if [ -x "$PA" ]; then
    mkdir -p "$W/tools"
    strip -o "$W/tools/perf_analyzer" "$PA" && gzip -9 "$W/tools/perf_analyzer"
    cp "$("${BENCH_VENV:-.bench-venv}/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))')/libcudart.so.12" "$W/tools/"
    cp -L /lib/x86_64-linux-gnu/libb64.so.0d "$W/tools/"
  else
    echo "no $PA (bash bench/run.sh makes it): the workers mode will have no load generator" >&2
  fi
  # kbundle itself (pure Python; the package-dir mapping is resolved at wheel build time).
  "$PY" -m pip wheel -q --no-deps -w "$W" .
  # .gitignore lists /.gpu-wheels/ and /.gpu-out/, so the device `run` takes the wheelhouse only
  # when named: carry [".gpu-wheels"].
  du -sh "$W"
  size=$(du -sm "$W" | cut -f1)
  [ "$size" -lt 60 ] || { echo "wheelhouse is ${size} MiB: over the 64 MiB that machine takes" >&2; exit 1; }
  echo "prep done: now run 'bash scripts/gpu_check.sh' on the GPU machine with .gpu-wheels/ beside it"
  exit 0
fi

# ---------------------------------------------------------------- device phase
# MODE device: the GPU checks below; workers: bench/workers.py on the machine's CPUs (issue 11's
# many-core scaling table, CPU engine); all: both, workers first, one install.
case "$MODE" in device|workers|all) ;; *) echo "mode: prep | device | workers | all" >&2; exit 2;; esac
PY="${PY:-python3}"
OUT="${OUT:-$PWD/.gpu-out}"; mkdir -p "$OUT"; export OUT
export KB_DEVICE="${KB_DEVICE:-cuda}"
export KB_DEADLINE=$(( $(date +%s) + ${KB_BUDGET_S:-400} ))   # optional steps stop before this
export KBUNDLE_CACHE="${KBUNDLE_CACHE:-/tmp/kb-cache}"        # fresh: model.pt2 exported by THIS torch

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true
  "$PY" - <<'EOF'
import os, sys
print("python", sys.version.split()[0], sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if os.environ["KB_DEVICE"] == "cuda":
    assert torch.cuda.is_available(), "torch sees no GPU: is a CPU torch shadowing the image's?"
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for mod in ("onnxruntime", "numpy", "onnxscript", "sklearn", "pytest"):
    try:
        m = __import__(mod); print(mod, getattr(m, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(mod, "MISSING", exc)
EOF
} 2>&1 | tee "$OUT/env.txt"

if [ -z "${KB_SKIP_INSTALL:-}" ]; then
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 12), "wheelhouse is cp312: re-run prep for this python"'
  ls "$W"/kbundle-*.whl >/dev/null || { echo "no $W: run 'bash $0 prep' first and bring .gpu-wheels along" >&2; exit 2; }
  SITE=/tmp/kb-site
  rm -rf "$SITE"
  # --no-deps: install exactly the carried wheels; the image supplies torch/numpy/onnxruntime.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$W"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -m pip check >> "$OUT/env.txt" 2>&1 || true   # informational (versions it dislikes)
fi

"$PY" - <<'EOF' 2>&1 | tail -3
import sys
# kserve and tritonclient both register the V2 `inference.*` protos; protobuf allows one copy per
# process, so (as tests/conftest.py does) tritonclient's module stands in for kserve's here.
import tritonclient.grpc.service_pb2 as triton_pb2
sys.modules.setdefault("kserve.protocol.grpc.grpc_predict_v2_pb2", triton_pb2)
import tritonclient.grpc, tritonclient.http, kbundle.predictors.__main__, kbundle.predictors.torch_engine  # noqa
print("imports ok")
EOF

if [ "$MODE" = workers ] || [ "$MODE" = all ]; then
  TOOLS=/tmp/kb-tools; mkdir -p "$TOOLS"
  gunzip -c "$W/tools/perf_analyzer.gz" > "$TOOLS/perf_analyzer" && chmod +x "$TOOLS/perf_analyzer"
  cp "$W"/tools/*.so.* "$TOOLS/"
  # CPU engine: the GPU stays out of it; every core is the predictor's and perf_analyzer's to share.
  LD_LIBRARY_PATH="$TOOLS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" CUDA_VISIBLE_DEVICES= PYTHONUNBUFFERED=1 \
    timeout "${KB_WORKERS_S:-330}" "$PY" bench/workers.py --python "$PY" --perf-analyzer "$TOOLS/perf_analyzer" \
      --workers-list "${KB_WORKERS_LIST:-1,2,4,8}" --models tiny mlp --rounds 1 --seconds "${KB_WORKERS_SECONDS:-4}" \
      --concurrency "${KB_WORKERS_CONCURRENCY:-64}" --work /tmp/kb-workers --out "$OUT" 2>&1 || true
  [ "$MODE" = workers ] && exit 0
  export KB_DEADLINE=$(( $(date +%s) + ${KB_BUDGET_S:-400} ))  # the checks' own budget starts now
fi

set +e
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/check.log"
"""The checks. Each records pass/fail with numbers into results.json; exit 1 if any failed."""
import json, os, shutil, signal, subprocess, sys, time, traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc.service_pb2 as _triton_pb2  # one inference.* proto copy per process

sys.modules.setdefault("kserve.protocol.grpc.grpc_predict_v2_pb2", _triton_pb2)
sys.path.insert(0, "tests")  # tests/procs.py: free ports, start and wait for readiness
from procs import start_module  # noqa: E402

from kbundle import cli  # noqa: E402
from kbundle.predictors.torch_engine import TorchEngine  # noqa: E402
from kbundle.samples import digits_split  # noqa: E402
from kbundle.settings import ModelSettings  # noqa: E402

OUT = Path(os.environ["OUT"])
DEV = os.environ["KB_DEVICE"]
DEADLINE = float(os.environ["KB_DEADLINE"])
RESULTS = {"device": DEV, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else None, "checks": []}
WORK = Path("/tmp/kb-gpu-check"); shutil.rmtree(WORK, ignore_errors=True); WORK.mkdir(parents=True)


def left() -> float:
    return DEADLINE - time.time()


def check(name, ok, **info):
    RESULTS["checks"].append({"name": name, "ok": bool(ok), **info})
    print(("PASS " if ok else "FAIL ") + name, json.dumps(info, default=str), flush=True)
    return ok


def step(name, fn):
    t = time.time()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others
        traceback.print_exc()
        check(name + " (raised)", False, error=f"{type(exc).__name__}: {exc}"[:2000])
    print(f"-- {name}: {time.time() - t:.1f}s, {left():.0f}s left", flush=True)


# -- 0. the model: exported here by this torch, checked against eager by `kbundle export` ----------
MODEL = WORK / "digits-torch"
t0 = time.time()
code = cli.main(["export", "--model", "kbundle.samples_torch:digits_model", "--out", str(MODEL),
                 "--format", "program"])
assert code == 0, f"kbundle export exited {code}"
(MODEL / "kbundle.yaml").write_text("max_batch_size: 32\nmax_batch_delay_ms: 2.0\n")
print(f"exported {MODEL} in {time.time() - t0:.1f}s", flush=True)

_, test = digits_split()
X = np.ascontiguousarray(test.images.reshape(len(test.images), -1).astype(np.float32))
Y = test.labels
REF = TorchEngine.load(MODEL / "model.pt2", ModelSettings(device="cpu", warmup=False))


def reference(x):
    label, probs = REF.run({"input": x}, ["label", "probabilities"])
    return label, probs


def compare(tag, x, label, probs, precision):
    rl, rp = reference(x)
    atol = 1e-4 if precision == "fp32" else 3e-2
    diff = float(np.abs(probs.astype(np.float64) - rp).max()) if probs.size else 0.0
    agree = float((label == rl).mean()) if label.size else 1.0
    ok = (probs.dtype == np.float32 and label.dtype == np.int64 and probs.shape == rp.shape
          and diff <= atol and agree >= (1.0 if precision == "fp32" else 0.97))
    return ok, {"rows": len(x), "max_abs_diff": diff, "label_agreement": agree, "atol": atol}


# -- 1. the engine in-process on the device (isolates engine bugs from serving bugs) -------------
CONFIGS = {
    "fp32": dict(precision="fp32"),
    "fp16-graphs": dict(precision="fp16", cuda_graphs=True, batch_buckets=(1, 8, 32)),
    "bf16": dict(precision="bf16"),
}


def engine_checks():
    rng = np.random.default_rng(0)
    for tag, cfg in CONFIGS.items():
        precision = cfg["precision"]
        eng = TorchEngine.load(MODEL / "model.pt2", ModelSettings(device=DEV, warmup=False, **cfg))
        check(f"engine[{tag}] on {DEV}", eng.torch_device.type == DEV, device=eng.device)
        if cfg.get("cuda_graphs") and DEV == "cuda":
            check(f"engine[{tag}] graphs captured", sorted(eng._graphs) == [1, 8, 32],
                  buckets=sorted(eng._graphs))
        worst = {"max_abs_diff": 0.0, "label_agreement": 1.0}
        ok_all = True
        for rows in (1, 2, 5, 8, 9, 31, 32, 33, 100, len(X)):  # in/at/above every bucket
            x = X[:rows]
            label, probs = eng.run({"input": x}, ["label", "probabilities"])
            ok, info = compare(tag, x, label, probs, precision)
            ok_all &= ok
            worst["max_abs_diff"] = max(worst["max_abs_diff"], info["max_abs_diff"])
            worst["label_agreement"] = min(worst["label_agreement"], info["label_agreement"])
        check(f"engine[{tag}] matches CPU fp32 reference", ok_all, **worst)
        # padding must not leak: same 3 rows after a 5-row call on another input, same bucket (8)
        a = eng.run({"input": X[100:103]}, ["probabilities"])[0]
        eng.run({"input": X[200:205]}, ["probabilities"])
        b = eng.run({"input": X[100:103]}, ["probabilities"])[0]
        check(f"engine[{tag}] repeatable across padded calls", np.array_equal(a, b),
              max_abs_diff=float(np.abs(a - b).max()))
        # concurrent callers (the runner has one thread per instance; graphs share static buffers)
        sizes = rng.integers(1, 40, 64)
        starts = rng.integers(0, len(X) - 40, 64)
        jobs = [X[s:s + n] for s, n in zip(starts, sizes)]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda x: eng.run({"input": x}, ["label", "probabilities"]), jobs))
        bad = [i for i, (x, (l, p)) in enumerate(zip(jobs, got)) if not compare(tag, x, l, p, precision)[0]]
        check(f"engine[{tag}] 8 threads x 64 calls match reference", not bad, bad_calls=bad[:10])
        # latency, informational
        x32 = X[:32]
        for _ in range(5):
            eng.run({"input": x32}, ["label", "probabilities"])
        t = time.perf_counter()
        for _ in range(50):
            eng.run({"input": x32}, ["label", "probabilities"])
        RESULTS.setdefault("latency_ms_b32", {})[tag] = (time.perf_counter() - t) / 50 * 1e3
        eng.close()
        del eng
        if DEV == "cuda":
            torch.cuda.empty_cache()


# -- 2. the real predictor process, REST + gRPC with tritonclient ---------------------------------
def served(tag, flags, precision):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    log = OUT / f"server-{tag}.log"
    server = start_module(
        "kbundle.predictors",
        ["--model_name", "digits", "--model_dir", str(MODEL), "--device", DEV, *flags],
        log, "/v2/models/digits/ready", timeout=max(60, min(240, left())),
    )
    try:
        text = server.log()
        check(f"served[{tag}] engine loaded on {DEV}",
              "loaded torch engine" in text and (f" on {DEV}:0" in text if DEV == "cuda" else " on cpu" in text),
              line=next((ln for ln in text.splitlines() if "loaded torch engine" in ln), None))
        if "--cuda_graphs" in flags and DEV == "cuda":
            check(f"served[{tag}] graphs captured",
                  "captured CUDA graphs for batch buckets [1, 8, 32]" in text)
        if precision != "fp32":
            check(f"served[{tag}] runs {precision}", {"fp16": "float16", "bf16": "bfloat16"}[precision] in text)
        http = httpclient.InferenceServerClient(server.http_url)
        meta = http.get_model_metadata("digits")
        check(f"served[{tag}] metadata", meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
              and [o["name"] for o in meta["outputs"]] == ["label", "probabilities"], meta=meta)
        ok_all, worst = True, 0.0
        for rows in (1, 5, 8, 9, 31, 32):  # max_request_rows is max_batch_size (32) here
            x = X[:rows]
            inp = httpclient.InferInput("input", list(x.shape), "FP32"); inp.set_data_from_numpy(x, binary_data=True)
            r = http.infer("digits", [inp])
            ok, info = compare(tag, x, r.as_numpy("label"), r.as_numpy("probabilities"), precision)
            ok_all &= ok; worst = max(worst, info["max_abs_diff"])
        check(f"served[{tag}] REST rows 1..32 match reference", ok_all, max_abs_diff=worst)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        x = X[:13]
        g = grpcclient.InferInput("input", list(x.shape), "FP32"); g.set_data_from_numpy(x)
        gr = grpc.infer("digits", [g], outputs=[grpcclient.InferRequestedOutput("probabilities"),
                                                grpcclient.InferRequestedOutput("label")])
        ok, info = compare(tag, x, gr.as_numpy("label"), gr.as_numpy("probabilities"), precision)
        check(f"served[{tag}] gRPC matches reference", ok, **info)

        # concurrency through the dynamic batcher (concat/split) and 2 engine instances
        rng = np.random.default_rng(1)
        jobs = [(int(s), int(n)) for s, n in zip(rng.integers(0, len(X) - 16, 96), rng.integers(1, 17, 96))]

        def one(job):
            s, n = job
            c = grpcclient.InferenceServerClient(server.grpc_url)
            xi = X[s:s + n]
            gi = grpcclient.InferInput("input", list(xi.shape), "FP32"); gi.set_data_from_numpy(xi)
            res = c.infer("digits", [gi])
            return compare(tag, xi, res.as_numpy("label"), res.as_numpy("probabilities"), precision)[0]

        with ThreadPoolExecutor(16) as pool:
            oks = list(pool.map(one, jobs))
        check(f"served[{tag}] 16 clients x 96 requests match reference", all(oks), failed=oks.count(False))
        batches = [ln for ln in server.log().splitlines() if "retrying each alone" in ln or "engine failure" in ln]
        check(f"served[{tag}] no engine failures in log", not batches, lines=batches[:5])

        big = np.zeros((33, 64), np.float32)
        bi = httpclient.InferInput("input", list(big.shape), "FP32"); bi.set_data_from_numpy(big, binary_data=True)
        try:
            http.infer("digits", [bi]); status, message = "no error", ""
        except InferenceServerException as exc:
            status, message = exc.status(), exc.message()
        check(f"served[{tag}] 33 rows -> 400 naming max_request_rows",
              status == "400" and "max_request_rows" in message, status=status, message=message)

        if DEV == "cuda":  # informational: does nvidia-smi see the predictor holding GPU memory?
            q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                               capture_output=True, text=True)
            RESULTS.setdefault("nvidia_smi_apps", {})[tag] = {"server_pid": server.proc.pid, "apps": q.stdout.strip()}
    finally:
        rc = server.stop()
        check(f"served[{tag}] stops cleanly on SIGTERM", rc in (0, -signal.SIGTERM), returncode=rc)


# -- 3. optional: AOTInductor package compiled for CUDA (save_aoti checks it on CUDA itself too) --
def aoti():
    if DEV != "cuda":
        return
    out = WORK / "digits-aoti"
    t = time.time()
    code = cli.main(["export", "--model", "kbundle.samples_torch:digits_model", "--out", str(out),
                     "--format", "aoti", "--device", "cuda"])
    check("aoti[cuda] export", code == 0, seconds=time.time() - t)
    eng = TorchEngine.load(out / "model.pt2", ModelSettings(device="cuda", warmup=False))
    label, probs = eng.run({"input": X[:77]}, ["label", "probabilities"])
    ok, info = compare("aoti", X[:77], label, probs, "fp32")
    check("aoti[cuda] matches CPU fp32 reference", ok, device=eng.device, **info)


step("engine checks", engine_checks)
step("served fp32, 2 instances", lambda: served("fp32", ["--instances", "2"], "fp32"))
if left() > 60:
    step("served fp16 + CUDA graphs, 2 instances",
         lambda: served("fp16-graphs", ["--instances", "2", "--precision", "fp16", "--cuda_graphs", "true",
                                        "--batch_buckets", "1,8,32"], "fp16"))
else:
    check("served fp16 + CUDA graphs", False, skipped="out of time")
if os.environ.get("KB_AOTI", "1") == "1" and left() > 150:
    step("aoti cuda", aoti)
else:
    RESULTS["aoti"] = f"skipped ({left():.0f}s left or KB_AOTI=0)"

(OUT / "results.json").write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")
failed = [c["name"] for c in RESULTS["checks"] if not c["ok"]]
print(f"\n{len(RESULTS['checks']) - len(failed)} passed, {len(failed)} failed")
for name in failed:
    print("  FAILED:", name)
sys.exit(1 if failed else 0)
PYEOF
rc=${PIPESTATUS[0]}

# The project's own gpu-marked torch test, if time is left (exports onnx+program: needs onnxscript).
now=$(date +%s)
if [ "$KB_DEVICE" = cuda ] && [ $(( KB_DEADLINE - now )) -gt 75 ]; then
  timeout $(( KB_DEADLINE - now )) "$PY" -m pytest tests/predictors/test_engines_torch.py -m gpu -rs -q \
    -p no:cacheprovider 2>&1 | tail -40 > "$OUT/pytest.txt" || true
else
  echo "skipped: $(( KB_DEADLINE - now ))s left" > "$OUT/pytest.txt"
fi
cat "$OUT/pytest.txt"
exit "$rc"
