"""DiC / DiCo vs diffusers' DiT at their default and best paths (eager NCHW, default, compiled): forward, training
step and sampling throughput against the speed targets, alternated in one run.

    OMP_NUM_THREADS=2 python scripts/benchmark_paths.py --threads 2

All logic lives in convdiff.apps.benchmarks.paths (see `python scripts/benchmark_paths.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.paths import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
