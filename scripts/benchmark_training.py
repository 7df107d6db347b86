"""Quality-per-compute training benchmark on MNIST: DiC, DiCo, diffusers UNet2DModel and DiT (~1.7M params
each), the main job's recipe, the same CPU wall-clock budget, then FID and class accuracy; appends the tables
(mean ± spread over seeds, and per run) to docs/benchmarks.md.

    OMP_NUM_THREADS=1 python scripts/benchmark_training.py                     # default: 300 s each, ~25 min
    OMP_NUM_THREADS=1 python scripts/benchmark_training.py --budget 90 --seeds 0 1 2
    OMP_NUM_THREADS=1 python scripts/benchmark_training.py --budget 20 --fid-samples 50 --no-write   # smoke

All logic lives in convdiff.apps.benchmarks.training (see `python scripts/benchmark_training.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.training import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
