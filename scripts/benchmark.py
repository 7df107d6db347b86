"""Inference throughput / FLOPs benchmark of the denoisers; prints a table and appends it to docs/benchmarks.md.

    python scripts/benchmark.py                                   # the default run (~10 min on 2 cores)
    python scripts/benchmark.py --models dico-s dit-s-2 --precisions fp32 --channels-last --no-write

All logic lives in convdiff.apps.benchmarks.forward (see `python scripts/benchmark.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.forward import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
