#!/usr/bin/env bash
# Builds the container images: `bash scripts/images.sh build [--offline-base] [NAME...]`.
# NAME: predictor-cpu, transformer, storage-init, predictor-torch, predictor-gpu (default: all). Tags are the ones the
# manifests use, ghcr.io/kbundle/NAME:VERSION (VERSION from pyproject.toml). Uses docker, podman or
# buildah, whichever works here (KBUNDLE_BUILDER=... to choose), and prints each image's size.
# The locked wheels are fetched on the host first (pip's own configuration, so a local mirror serves
# them; cached in $CACHE/wheels, linked into docker/wheelhouse) and the build installs from there.
# --offline-base: no registry for the base either. A Debian bookworm root made with debootstrap
# (python3, venv, pip, CA certificates) from the mirror apt already uses, imported as an image and
# passed as PYTHON_IMAGE. Cached in ${KBUNDLE_IMAGE_CACHE:-~/.cache/kbundle/images}. The GPU image
# is skipped then: its base is NVIDIA's CUDA runtime image, which only a registry provides.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${KBUNDLE_IMAGE_CACHE:-$HOME/.cache/kbundle/images}"
BASE_TAG="localhost/kbundle/python-base:bookworm"
ALL=(predictor-cpu transformer storage-init predictor-torch predictor-gpu)
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

builder() {  # the first container builder that can build here
  local name
  for name in ${KBUNDLE_BUILDER:-docker podman buildah}; do
    case "$name" in
      docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 && { echo docker; return; } ;;
      podman) command -v podman >/dev/null && podman info >/dev/null 2>&1 && { echo podman; return; } ;;
      buildah) command -v buildah >/dev/null && buildah info >/dev/null 2>&1 && { echo buildah; return; } ;;
    esac
  done
  echo "images: no working docker, podman or buildah (bash scripts/system-deps.sh installs buildah)" >&2
  return 1
}

debian_mirror() {  # the Debian mirror apt is configured with (deb822 .sources or sources.list)
  local uri
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)"
  [ -n "$uri" ] || uri="$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
    awk '{print $2}' | grep -v security | head -1)"
  echo "$uri"
}

make_rootfs() {  # debootstrap a python base into $CACHE/python-base.tar (once)
  local tar="$CACHE/python-base.tar" root
  [ -s "$tar" ] && return 0
  command -v debootstrap >/dev/null || { echo "images: --offline-base needs debootstrap" >&2; return 1; }
  [ "$(id -u)" = 0 ] || { echo "images: --offline-base needs root (debootstrap)" >&2; return 1; }
  mkdir -p "$CACHE"
  root="$(mktemp -d "$CACHE/rootfs.XXXX")"
  echo "images: debootstrap bookworm (minbase + python3) into $root ..." >&2
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" $(debian_mirror) >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$root"; return 1; }
  rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
  ln -sf python3 "$root/usr/bin/python"
  ln -sf pip3 "$root/usr/bin/pip"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$tar.part" . && mv "$tar.part" "$tar"
  rm -rf "$root"
}

import_base() {  # $1 builder: the cached rootfs as image $BASE_TAG (when not already there)
  local tool="$1" ctr mnt
  has_image "$tool" "$BASE_TAG" && return 0
  make_rootfs
  case "$tool" in
    docker | podman) "$tool" import --change 'CMD ["python3"]' "$CACHE/python-base.tar" "$BASE_TAG" >/dev/null ;;
    buildah)
      ctr="$(buildah from scratch)"
      mnt="$(buildah mount "$ctr")"
      tar -C "$mnt" -xf "$CACHE/python-base.tar"
      buildah umount "$ctr" >/dev/null
      buildah config --cmd python3 --env LANG=C.UTF-8 "$ctr"
      buildah commit -q "$ctr" "$BASE_TAG" >/dev/null
      buildah rm "$ctr" >/dev/null
      ;;
  esac
}

quiet() {  # run a command; show its output only when it fails (and then fail)
  local log
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; echo "images: failed: $*" >&2; return 1; }
  rm -f "$log"
}

fill_wheelhouse() {  # $@: image names. Their locked wheels (and the build lock's), hash-checked, from
  # the shared cache $CACHE/wheels into docker/wheelhouse; pip downloads only what the cache lacks.
  local locks=(locks/build.txt) name
  for name in "$@"; do
    [ "$name" = predictor-gpu ] && continue  # Python 3.10 and TensorRT: built where PyPI is reachable
    locks+=("locks/$name.txt")
  done
  if ! "$PY" scripts/wheelhouse.py "$CACHE/wheels" docker/wheelhouse "${locks[@]}" 2>/dev/null; then
    local reqs=()
    for lock in "${locks[@]}"; do reqs+=(-r "$lock"); done
    quiet "$PY" -m pip download -q --require-hashes --no-deps --only-binary=:all: \
      --dest "$CACHE/wheels" "${reqs[@]}"
    "$PY" scripts/wheelhouse.py "$CACHE/wheels" docker/wheelhouse "${locks[@]}"
  fi
}

has_image() {  # $1 builder, $2 tag
  case "$1" in
    buildah) buildah inspect --type image "$2" >/dev/null 2>&1 ;;
    *) "$1" image inspect "$2" >/dev/null 2>&1 ;;
  esac
}

image_size() {  # $1 builder, $2 tag -> size as the builder reports it
  case "$1" in
    buildah) buildah images --format '{{.Size}}' "$2" ;;
    *) "$1" image ls --format '{{.Size}}' "$2" ;;
  esac
}

build_one() {  # $1 builder, $2 name, $3.. extra build args
  local tool="$1" name="$2" tag="ghcr.io/kbundle/$2:$VERSION" start
  shift 2
  start="$(date +%s)"
  case "$tool" in
    docker) DOCKER_BUILDKIT=1 docker build -q -f "docker/$name.Dockerfile" -t "$tag" "$@" . >/dev/null ;;
    podman) podman build -q --layers -f "docker/$name.Dockerfile" -t "$tag" "$@" . >/dev/null ;;
    buildah) buildah build -q --isolation chroot --layers -f "docker/$name.Dockerfile" -t "$tag" "$@" . >/dev/null ;;
  esac
  printf '%-44s %8s  built in %ss\n' "$tag" "$(image_size "$tool" "$tag")" "$(($(date +%s) - start))"
}

build() {
  local offline=0 names=() args=() tool name
  for arg in "$@"; do
    case "$arg" in
      --offline-base) offline=1 ;;
      -*) echo "images: unknown option $arg" >&2; return 2 ;;
      *) names+=("$arg") ;;
    esac
  done
  [ "${#names[@]}" -gt 0 ] || names=("${ALL[@]}")
  tool="$(builder)"
  echo "images: building with $tool" >&2
  if [ "$offline" = 1 ]; then
    import_base "$tool"
    args+=(--build-arg "PYTHON_IMAGE=$BASE_TAG" --build-arg WHEELHOUSE_ONLY=1)
  fi
  mkdir -p docker/wheelhouse
  for name in "${names[@]}"; do
    [ -f "docker/$name.Dockerfile" ] || { echo "images: no docker/$name.Dockerfile" >&2; return 2; }
  done
  fill_wheelhouse "${names[@]}"
  for name in "${names[@]}"; do
    if [ "$name" = predictor-gpu ] && [ "$offline" = 1 ]; then
      echo "images: predictor-gpu skipped: every stage builds on NVIDIA's CUDA runtime image, which only a registry provides" >&2
      continue
    fi
    build_one "$tool" "$name" "${args[@]}"
  done
}

sizes() {  # a Markdown table of the images present (bench/results/images.md is its output)
  local tool tag
  tool="$(builder)"
  printf '# Image sizes\n\n`bash scripts/images.sh sizes` (%s, %s, %s)\n\n| image | size |\n|---|---|\n' \
    "$tool" "$(date -u +%Y-%m-%d)" "$(uname -m)"
  for tag in "$BASE_TAG" "${ALL[@]/#/ghcr.io/kbundle/}"; do
    [[ "$tag" == ghcr.io/* ]] && tag="$tag:$VERSION"
    has_image "$tool" "$tag" && printf '| `%s` | %s |\n' "$tag" "$(image_size "$tool" "$tag")"
  done
  return 0
}

case "${1:-}" in
  build) shift; build "$@" ;;
  sizes) sizes ;;
  base) import_base "$(builder)" && echo "$BASE_TAG" ;;
  *) echo "usage: bash scripts/images.sh build [--offline-base] [NAME...] | base | sizes" >&2; exit 2 ;;
esac
