"""`python -m gpt_fast.training ...` (also under torchrun): `gpt-fast train ...`."""

import sys

from gpt_fast.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
