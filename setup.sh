#!/usr/bin/env bash
# Sets up a fresh machine for alexnet: a virtual environment in .venv with torch (the CPU build
# where there is no NVIDIA GPU, so no CUDA packages are pulled), this package, and Fashion-MNIST
# from Debian's dataset-fashion-mnist when it is not already on the machine. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/pip install -q torch
  else
    # The CPU build: on these machines `pip install torch==2.13.0` takes a local CPU wheel;
    # elsewhere PyTorch's CPU index serves it.
    .venv/bin/pip install -q torch==2.13.0 2>/dev/null \
      || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
.venv/bin/pip install -q -e ".[test]"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ -z "${ALEXNET_DATA:-}" ] && [ ! -d "$HOME/.cache/alexnet/fashion-mnist" ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1; then
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not apt-get install dataset-fashion-mnist; alexnet will try to download Fashion-MNIST"
  fi
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
