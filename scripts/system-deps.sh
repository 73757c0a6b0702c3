#!/usr/bin/env bash
# System packages the tests need, installed from Debian when missing and running as root:
# buildah + debootstrap (container images, tests/docker) and prometheus (canary analysis tests).
# Not root, or apt-get absent: prints what is missing and returns 0 (those tests skip with a reason).
set -euo pipefail
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v prometheus >/dev/null || missing+=(prometheus)
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${missing[*]} (not root or no apt-get: their tests will skip)" >&2
  exit 0
fi
echo "system-deps: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
