"""`python -m convdiff.convert --checkpoint X.pt --model dico-xl --output DIR`."""

import sys

from ..apps.convert import convert_main

sys.exit(convert_main())
