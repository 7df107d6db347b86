"""DiC / DiCo vs diffusers' DiT from 256 to 2048 px: forward and training time per image, peak memory, MACs and
the efficiency gap, alternated in one run; appends a section and two plots to docs/benchmarks.md.

    OMP_NUM_THREADS=2 python scripts/benchmark_resolution.py --threads 2 --profile

All logic lives in convdiff.apps.benchmarks.resolution (see `python scripts/benchmark_resolution.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.resolution import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
