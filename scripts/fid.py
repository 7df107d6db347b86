"""FID between two image sets, offline: ``python scripts/fid.py A B [--save-stats PATH] [--inception-weights PATH]``.

A / B: image folder, ADM sample .npz (arr_0 uint8 NHWC) or statistics .npz (mu, sigma). See convdiff/apps/fid.py.
"""

import sys

from convdiff.apps.fid import fid_main

if __name__ == "__main__":
    sys.exit(fid_main())
