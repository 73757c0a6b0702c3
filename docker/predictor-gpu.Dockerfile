# Predictor, GPU: `python -m kbundle.predictors` with ONNX Runtime GPU (TensorRT + CUDA execution
# providers) and TensorRT for model.plan engines, on NVIDIA's CUDA + cuDNN runtime image.
# Build from the repository root (the build context):
#   docker build -f docker/predictor-gpu.Dockerfile -t ghcr.io/kbundle/predictor-gpu:0.1.0 .
# Needs the NVIDIA container toolkit on the node; request nvidia.com/gpu in the InferenceService.
ARG CUDA_RUNTIME=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# ---- builder: same base and Python (3.10) as the runtime, so the wheels match ------------
FROM ${CUDA_RUNTIME} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
COPY predictors ./predictors
COPY transformers ./transformers
COPY storage-init ./storage-init
# kbundle[gpu] = onnxruntime-gpu, tensorrt, cuda-python (plus the CPU onnxruntime that the base
# dependency list names; it is swapped out in the runtime stage).
RUN python3 -m pip wheel --no-cache-dir --wheel-dir /wheels ".[gpu]"

# ---- runtime: CUDA runtime libraries only, no compilers, no sources, no weights -----------
FROM ${CUDA_RUNTIME}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/kbundle \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 kbundle \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kbundle kbundle
COPY --from=builder /wheels /wheels
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` module: remove the CPU build
# and reinstall the GPU one over it, so `import onnxruntime` has the CUDA/TensorRT providers.
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels "kbundle[gpu]" \
 && python -m pip uninstall -y onnxruntime \
 && python -m pip install --no-cache-dir --no-index --find-links /wheels --force-reinstall --no-deps onnxruntime-gpu \
 && rm -rf /wheels
USER 1000:1000
WORKDIR /home/kbundle
# TensorRT engines built at start-up go to KBUNDLE_ENGINE_CACHE_DIR (mount an emptyDir there).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kbundle.predictors"]
