"""Regional (`compile_repeated_blocks`) vs whole-model compilation: compile time, graphs and forward speed.

    OMP_NUM_THREADS=1 python scripts/benchmark_regional_compile.py    # dic-tiny, diffit-tiny, batch 4: minutes

All logic lives in convdiff.apps.benchmarks.regional_compile (see `--help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convdiff.apps.benchmarks.regional_compile import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
