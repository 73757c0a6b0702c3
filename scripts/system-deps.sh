#!/usr/bin/env bash
# System packages the tests use, installed only when missing and running as root (Debian/Ubuntu).
# Without root nothing is installed and the tests that need a package skip with the reason.
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)  # tests/canary: a real Prometheus
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "kbundle: installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
