"""Load benchmark of `gpt-fast serve` (the code is gpt_fast/cli/serve_benchmark.py; also `gpt-fast bench --serve`).

    python benchmarks/bench_serve.py [--concurrency 1,4,16] [--rate R] [--num-prompts 32] [--max-seconds 90]
                                     [--dtype auto] [--json out.json] [--png out.png]
"""

import sys

from gpt_fast.cli.serve_benchmark import main

if __name__ == "__main__":
    sys.exit(main())
