# Predictor, CPU: `python -m kbundle.predictors` with ONNX Runtime (CPU build).
# Build from the repository root (the build context):
#   docker build -f docker/predictor-cpu.Dockerfile -t ghcr.io/kbundle/predictor-cpu:0.1.0 .
# Model weights are never baked in: KServe's storage initializer puts them in /mnt/models.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: every wheel (ours and all dependencies) is built or fetched here ----------
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
COPY predictors ./predictors
COPY transformers ./transformers
COPY storage-init ./storage-init
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime: no compilers, no sources, no weights ---------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/kbundle
RUN groupadd --gid 1000 kbundle \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kbundle kbundle
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels kbundle \
 && rm -rf /wheels
# Numeric user so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/kbundle
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kbundle.predictors"]
