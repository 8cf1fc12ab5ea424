"""``python -m gankd.distill`` = ``gankd-distill``; the form torchrun starts on every device:
``torchrun --standalone --nproc_per_node=N -m gankd.distill run RECIPE [key=value ...]``."""

import sys

from .cli import main

sys.exit(main())
