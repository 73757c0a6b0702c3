# syntax=docker/dockerfile:1
# kbundle storage initializer: KServe's `SRC_URI DEST_DIR [...]` init container.
# Build from the repository root:
#   docker build -f docker/storage-init.Dockerfile -t kbundle/storage-init:0.1.0 .
# The final image holds Python, kserve-storage's transports and kbundle; no compilers, no root.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Compilers live only here, for any dependency that ships no wheel for this platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY predictors ./predictors
COPY transformers ./transformers
COPY storage-init ./storage-init
# kbundle itself without its serving dependencies (onnxruntime, kserve server, grpc): the
# initializer needs only kserve-storage's transports, requests and PyYAML.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels "kserve-storage==0.21.*" "requests>=2.31" "pyyaml>=6"

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/kbundle
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels --no-deps /wheels/kbundle-*.whl \
 && pip install --no-index --find-links /wheels "kserve-storage==0.21.*" "requests>=2.31" "pyyaml>=6" \
 && pip uninstall -y pip setuptools wheel \
 && useradd --uid 1000 --user-group --home-dir /home/kbundle --create-home --shell /usr/sbin/nologin kbundle \
 && python -c "import kbundle.storage_init.__main__"
# KServe mounts the model volume at /mnt/models; as in KServe's own image, UID 1000 owns it.
RUN mkdir -p /mnt/models && chown 1000:1000 /mnt/models
USER 1000:1000
WORKDIR /home/kbundle
ENTRYPOINT ["python", "-m", "kbundle.storage_init"]
