"""`python -m convdiff.convert --checkpoint X.pt --model dico-xl --output DIR`."""

import sys

from .main import convert_main

sys.exit(convert_main())
