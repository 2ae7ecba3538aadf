"""`python -m gpt_fast.train ...` (and `torchrun --nproc_per_node=N -m gpt_fast.train ...`): `gpt-fast train ...`.

An entry point only, never imported (`gpt_fast.train` is the training function, gpt_fast.training.train)."""

import sys

from gpt_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
