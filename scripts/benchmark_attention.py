"""DiffiT-XL vs DiT-XL/2 (FLOPs per image and CPU throughput) and the attention backends side by side.

    OMP_NUM_THREADS=1 python scripts/benchmark_attention.py            # prints the tables, appends to docs/benchmarks.md
    python scripts/benchmark_attention.py --no-write --skip-models       # backends only

All logic lives in convdiff.apps.benchmarks.attention (see `python scripts/benchmark_attention.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.attention import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
