"""Training-step speed on MNIST-shaped batches (img/s of forward + backward + AdamW), NCHW vs
channels-last vs compiled.

    python scripts/benchmark_train_speed.py                 # batch 64, 2 threads, ~3 min

All logic lives in convdiff.apps.benchmarks.train_speed (see `python scripts/benchmark_train_speed.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.train_speed import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
