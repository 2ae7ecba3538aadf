"""`python -m gpt_fast ...` runs the gpt-fast command."""

import sys

from gpt_fast.cli import main

sys.exit(main())
