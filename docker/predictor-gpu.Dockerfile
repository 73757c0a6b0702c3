# Predictor, GPU: `python -m kbundle.predictors` with ONNX Runtime GPU (TensorRT + CUDA execution
# providers) and TensorRT for model.plan engines, on NVIDIA's CUDA + cuDNN runtime image.
# Serves model.plan and model.onnx. It holds no PyTorch: model.pt2 (the torch engine) is not served
# from this image (a load there fails in one line naming the missing torch module).
# One CUDA 12 stack: this base's CUDA major matches the `gpu` extra's wheels (tensorrt-cu12,
# cuda-python <13, onnxruntime-gpu 1.19-1.23 = CUDA 12 + cuDNN 9); tests/docker checks they agree.
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
COPY locks/predictor-gpu.txt ./locks/
# locks/predictor-gpu.txt: kbundle's dependencies with onnxruntime-gpu in place of onnxruntime, and
# cuda-python (Python 3.10, hash-checked). TensorRT is in no lock (its PyPI package fetches the real
# wheel from NVIDIA's index: locks/README.md): the `gpu` extra's range, resolved here. kbundle: no deps.
RUN python3 -m pip wheel --no-cache-dir --require-hashes --no-deps --wheel-dir /wheels -r locks/predictor-gpu.txt \
 && python3 -m pip wheel --no-cache-dir --wheel-dir /wheels/trt "tensorrt-cu12>=10.9,<11" \
 && python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/kbundle .

# ---- runtime: CUDA runtime libraries only, no compilers, no sources, no weights -----------
FROM ${CUDA_RUNTIME}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/kbundle \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 kbundle \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kbundle kbundle
COPY locks/predictor-gpu.txt /usr/local/share/kbundle/lock.txt
COPY --from=builder /wheels /wheels
# The lock holds onnxruntime-gpu and no CPU onnxruntime (both install the `onnxruntime` module).
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels --require-hashes --no-deps \
      -r /usr/local/share/kbundle/lock.txt \
 && python -m pip install --no-cache-dir --no-index --find-links /wheels/trt "tensorrt-cu12>=10.9,<11" \
 && python -m pip install --no-cache-dir --no-index --no-deps /wheels/kbundle/kbundle-*.whl \
 && rm -rf /wheels
# ORT's TensorRT EP dlopens libnvinfer.so.10 by soname; the pip TensorRT wheels keep it under
# site-packages/tensorrt_libs, off the loader path, and ORT then silently falls back to the CUDA EP
# (onnxruntime#18597, #13501). Register that dir with the loader, and fail the build if it does not load.
RUN python -c "import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))" > /etc/ld.so.conf.d/tensorrt-pip.conf \
 && ldconfig \
 && python -c "import ctypes; [ctypes.CDLL(n) for n in ('libnvinfer.so.10', 'libnvinfer_plugin.so.10', 'libnvonnxparser.so.10')]"
USER 1000:1000
WORKDIR /home/kbundle
# TensorRT engines built at start-up go to KBUNDLE_ENGINE_CACHE_DIR (mount an emptyDir there).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kbundle.predictors"]
