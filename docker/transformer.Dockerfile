# Transformer: `python -m kbundle.transformers` (image pre/post-processing in front of a predictor).
# Build all images with `bash scripts/images.sh build [--offline-base]` (see README), or this one from
# the repository root (the build context; BuildKit, podman or buildah for RUN --mount):
#   docker build -f docker/transformer.Dockerfile -t ghcr.io/kbundle/transformer:0.1.0 .
# Installs exactly locks/transformer.txt (hash-checked) plus kbundle's own wheel. Model weights are never
# baked in: KServe's storage initializer puts them in /mnt/models.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: kbundle's wheel from source, the locked wheels fetched by hash -------------------
FROM ${PYTHON_IMAGE} AS builder
# 1 = take wheels only from docker/wheelhouse (scripts/images.sh fills it): no index is reached.
ARG WHEELHOUSE_ONLY=0
WORKDIR /build
COPY locks/build.txt locks/transformer.txt ./locks/
RUN --mount=type=bind,source=docker/wheelhouse,target=/wheelhouse \
    index="$([ "$WHEELHOUSE_ONLY" = 1 ] && echo --no-index || true)" \
 && pip install --no-cache-dir $index --find-links /wheelhouse --require-hashes --no-deps -r locks/build.txt \
 && pip download --no-cache-dir $index --find-links /wheelhouse --require-hashes --no-deps \
      --only-binary=:all: --dest /wheels -r locks/transformer.txt
COPY pyproject.toml README.md ./
COPY src ./src
COPY predictors ./predictors
COPY transformers ./transformers
COPY storage-init ./storage-init
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels/kbundle .

# ---- runtime: the lock and kbundle; no compilers, no sources, no weights ------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/home/kbundle
# The lock travels with the image (and keys the layer cache: a RUN's bind mounts do not).
COPY locks/transformer.txt /usr/local/share/kbundle/lock.txt
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels --require-hashes --no-deps \
      -r /usr/local/share/kbundle/lock.txt \
 && groupadd --gid 1000 kbundle \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kbundle --shell /usr/sbin/nologin kbundle
COPY --from=builder /wheels/kbundle /usr/local/share/kbundle/wheel
RUN pip install --no-cache-dir --no-index --no-deps /usr/local/share/kbundle/wheel/kbundle-*.whl
# Numeric user so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/kbundle
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kbundle.transformers"]
