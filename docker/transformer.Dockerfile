# Transformer: `python -m kbundle.transformers` (image pre/post-processing in front of a predictor).
# Build from the repository root (the build context):
#   docker build -f docker/transformer.Dockerfile -t ghcr.io/kbundle/transformer:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

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

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/kbundle
RUN groupadd --gid 1000 kbundle \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kbundle kbundle
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels kbundle \
 && rm -rf /wheels
USER 1000:1000
WORKDIR /home/kbundle
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kbundle.transformers"]
