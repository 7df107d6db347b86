"""ΔConvFusion module benchmark: self-attention vs linear attention vs ΔConvBlock over SD1.5's 16
self-attention layers, at 512, 1024, 2048 and 4096 px.

    OMP_NUM_THREADS=1 python scripts/benchmark_convfusion.py [--sizes 512 1024 2048 4096] [--budget 20] [--write]

All logic lives in convdiff.apps.benchmarks.convfusion (see `python scripts/benchmark_convfusion.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.convfusion import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
