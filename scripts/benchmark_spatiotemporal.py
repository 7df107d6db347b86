"""Cost of view-time mixing designs on V x T grids: FLOPs, CPU latency and peak memory.

    python scripts/benchmark_spatiotemporal.py --write-docs

All logic lives in convdiff.apps.benchmarks.spatiotemporal (see `python scripts/benchmark_spatiotemporal.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.spatiotemporal import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
