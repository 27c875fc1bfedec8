"""`python -m naclip_hf.cli ...` runs the `naclip` command (as torchrun and `accelerate launch -m` need)."""

import sys

from . import main

sys.exit(main())
