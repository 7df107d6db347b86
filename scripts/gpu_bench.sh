#!/usr/bin/env bash
# The prepared GPU run of the resolution sweep (docs/benchmarks.md): S and XL models, 256 to 2048 px, bf16 autocast
# with TF32 on, forward and training step timed with CUDA events after synchronisation, the efficiency gap
# profiled. Sized to finish within 5 minutes on one H100; the section and plots are appended to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
timeout 290 python -m convdiff bench-resolution --device cuda --precision bf16 --xl --profile \
    --resolutions 256 512 1024 2048 --rounds 5 --train-rounds 2 --title "Cost against resolution, GPU" "$@"
