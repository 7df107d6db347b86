"""Cost per step of the layered U-Net against a single-resolution U-Net of the same top resolution.

    OMP_NUM_THREADS=1 python scripts/benchmark_layered.py --write

All logic lives in convdiff.apps.benchmarks.layered (see `python scripts/benchmark_layered.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.layered import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
