"""Prompt lookup decoding (generate(prompt_lookup_num_tokens=N)) against plain decoding: batch-1 greedy tokens/s of
GPT-1's shape (random weights), alternating in one run, with the model passes each run made.

    python benchmarks/bench_prompt_lookup.py [--dtype bfloat16] [--quantization int8] [--new-tokens 128]
                                             [--lookup 2 4 8] [--repeats 3] [--threads 2]

The speed-up depends on how much of the text repeats what came before, so two bounds are timed:
- "repeating": the random model's greedy text, which soon repeats itself (so nearly every draft is accepted: the
  best case, as for text copied from the prompt);
- "always rejected": the same generation with every draft replaced by tokens that differ from the model's choice
  (the worst case: each pass verifies N tokens and keeps none of them, so it costs more than a plain step).
Every run's tokens are checked against plain decoding's. The machine line names the CPU and the kernel tier.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from timing import best_and_median, format_table, machine_description, time_alternating

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.generation import prompt_lookup
from gpt_fast.generation.decoder import IncrementalDecoder
from gpt_fast.ops import cpu_isa

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def rejected_drafts(vocab_size: int):
    """Every draft made of a token the model does not choose next (the last token + 1, a random model's greedy text
    repeating its last token)."""
    real = prompt_lookup.find_draft
    prompt_lookup.find_draft = lambda sequence, num_tokens, ngram: [(sequence[-1] + 1) % vocab_size] * num_tokens
    try:
        yield
    finally:
        prompt_lookup.find_draft = real


def count_passes(model, ids, kwargs) -> int:
    counted = []
    extend, step = IncrementalDecoder.extend, IncrementalDecoder.step
    IncrementalDecoder.extend = lambda self, tokens: counted.append(1) or extend(self, tokens)
    IncrementalDecoder.step = lambda self, tokens: counted.append(1) or step(self, tokens)
    try:
        model.generate(ids, step_replay=False, **kwargs)  # a replayed pass does not call the decoder
    finally:
        IncrementalDecoder.extend, IncrementalDecoder.step = extend, step
    return len(counted)


def run(dtype: torch.dtype, quantization: str | None, new_tokens: int, lookups: list[int], repeats: int) -> str:
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig()).to(dtype).eval()
    if quantization:
        model.quantize(quantization)
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    plain = model.generate(ids, max_new_tokens=new_tokens)
    cases = {("plain", None): {}}
    for n in lookups:
        cases[("repeating", n)] = dict(prompt_lookup_num_tokens=n)
        cases[("always rejected", n)] = dict(prompt_lookup_num_tokens=n)

    def scope(case):
        return rejected_drafts(model.config.vocab_size) if case[0] == "always rejected" else contextlib.nullcontext()

    def candidate(case, kwargs):
        def call():
            with scope(case):
                out = model.generate(ids, max_new_tokens=new_tokens, **kwargs)
            if not torch.equal(out, plain):
                raise AssertionError(f"{case}: tokens differ from plain decoding")
        return call

    samples = time_alternating({case: candidate(case, kw) for case, kw in cases.items()}, repeats=repeats)
    times = best_and_median(samples)
    base = times[("plain", None)]["best"]
    rows = []
    for case, kwargs in cases.items():
        with scope(case):
            passes = count_passes(model, ids, dict(max_new_tokens=new_tokens, **kwargs))
        best = times[case]["best"]
        rows.append([case[0], "-" if case[1] is None else case[1], new_tokens / best,
                     new_tokens / times[case]["median"], passes, base / best])
    header = ["drafts", "N", "tok/s best", "tok/s median", "model passes", "x plain"]
    weights = str(dtype).removeprefix("torch.") + (f", {quantization} weights" if quantization else "")
    return (f"GPT-1 shape, random weights, {weights}, batch 1, 32-token prompt + "
            f"{new_tokens} greedy tokens, best of {repeats} alternating rounds; {machine_description()}, kernel tier "
            f"{cpu_isa.level()}\n\n" + format_table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--quantization", choices=("int8", "int4", "int4-a8"), help="quantize the model first")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--lookup", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(run(DTYPES[args.dtype], args.quantization, args.new_tokens, args.lookup, args.repeats))


if __name__ == "__main__":
    main()
