"""`python -m gpt_fast.train ...` (and `torchrun --nproc_per_node=N -m gpt_fast.train ...`): `gpt-fast train ...`."""

import sys

from gpt_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
