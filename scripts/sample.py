"""accelerate launch scripts/sample.py --pipeline FOLDER --output samples.npz --num-samples 50000 [--resume]

The same as `convdiff sample` (one-line errors, exit status 2); under `accelerate launch` the processes share
the batches of a .npz run (convdiff/apps/sharded_sampling.py).
"""

import sys

from convdiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
