"""generate(ids, past_key_values=out.cache) (gpt_fast/generation/cache_reuse.py) against generate(ids): the time to
the first new token of a conversation's next turn, GPT-1's shape with random weights, alternating in one run.

    python benchmarks/bench_cache_reuse.py [--dtype bfloat16] [--history 448] [--turn 16] [--repeats 5] [--threads 2]

The history (--history random tokens) is generated once with return_dict_in_generate=True; the next turn is the
history followed by --turn new tokens, generated with max_new_tokens=1, with and without the history's cache.
Both give the same token (checked).
"""

from __future__ import annotations

import argparse

import torch
from engine_client import DTYPES, add_common_arguments, apply_threads, random_model
from timing import best_and_median, format_table, machine_description, time_alternating

from gpt_fast.ops import cpu_isa


def run(dtype: torch.dtype, history: int, turn: int, repeats: int, tiny: bool = False) -> str:
    model = random_model(dtype, tiny)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, history - 1), generator=generator)
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=1, return_dict_in_generate=True)  # caches history - 1 tokens
        ids = torch.cat([out.sequences, torch.randint(0, model.config.vocab_size, (1, turn), generator=generator)], 1)
        cases = {"whole prompt": lambda: model.generate(ids, max_new_tokens=1),
                 "past_key_values": lambda: model.generate(ids, max_new_tokens=1, past_key_values=out.cache)}
        if not torch.equal(cases["whole prompt"](), cases["past_key_values"]()):
            raise AssertionError("the first tokens differ")
        times = best_and_median(time_alternating(cases, repeats=repeats))
    base = times["whole prompt"]["best"]
    rows = [[name, 1e3 * t["best"], 1e3 * t["median"], base / t["best"]] for name, t in times.items()]
    shape = "tiny" if tiny else "GPT-1"
    return (f"{shape} shape, random weights, {str(dtype).removeprefix('torch.')}, a {history}-token history + {turn} "
            f"new prompt tokens, max_new_tokens=1, best of {repeats} alternating rounds; {machine_description()}, "
            f"kernel tier {cpu_isa.level()}\n\n" + format_table(["generate", "ms best", "ms median", "x whole"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--history", type=int, default=448)
    parser.add_argument("--turn", type=int, default=16)
    args = parser.parse_args(argv)
    apply_threads(args)
    print(run(DTYPES[args.dtype], args.history, args.turn, args.repeats, args.tiny))


if __name__ == "__main__":
    main()
