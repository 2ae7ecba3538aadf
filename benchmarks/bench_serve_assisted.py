"""Assisted decoding in the serving engine (`gpt-fast serve --assistant-model DIR`) against the plain engine and
prompt lookup, one request at a time (the latency case) and --concurrency requests at once, on a trained model and
a smaller trained assistant with the same tokenizer, alternating in one run.

    python benchmarks/bench_serve_assisted.py [--model DIR] [--assistant DIR] [--passages-from FILE]
                                              [--num-prompts 4] [--new-tokens 128] [--num-assistant-tokens 2 4 8]
                                              [--threshold 0.4] [--lookup 4] [--concurrency 4] [--dtype float32]
                                              [--repeats 3] [--threads 2]

Defaults: the Shakespeare recipe's model and assistant, prompted with passages of its validation text (as
bench_assisted.py, which times generate()'s assisted decoding; random weights would say nothing: how many drafts the
model keeps is the whole question). --gpt1-bounds times GPT-1's shape with a 2 x 128 assistant, random weights, its
drafts replaced by the plain engine's tokens (always kept) or by tokens the model does not choose (never kept), at
the assistant's real cost: the two bounds of a trained pair (a random pair's own drafts say nothing: both models
mostly repeat the last token). Use --threshold 0 there (a random assistant is never confident). Each engine runs its
loop on the main thread, as `gpt-fast serve` does, and a second thread submits the greedy requests. Per case: decode
tokens/s over its requests from the first token to the last (one request at a time: summed over the prompts; best
and median over rounds), the share of drafts kept, the ratio to the plain engine's best with as many requests, and
whether every request's tokens are the plain engine's (a pass over several rows rounds otherwise than a one-row
step, which can flip a near-tie).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path

import torch
from bench_assisted import RECIPE, passages
from bench_serve_speculation import DraftCounts, serve
from engine_client import DTYPES, apply_threads, random_assistant, random_model
from timing import format_table, machine_description

from gpt_fast import OpenAIGPTLMHeadModel, OpenAIGPTTokenizer
from gpt_fast.ops import cpu_isa
from gpt_fast.serving import Engine
from gpt_fast.serving.assistant_drafting import AssistantDrafting


def served(engine: Engine, prompts: list[list[int]], new_tokens: int, at_once: int) -> tuple[list, float]:
    """The prompts' greedy tokens and the seconds per decoded token: all at once, or one request at a time."""
    if at_once > 1:
        return serve(engine, prompts, new_tokens)
    results = [serve(engine, [prompt], new_tokens) for prompt in prompts]
    return [tokens[0] for tokens, _ in results], statistics.fmean(seconds for _, seconds in results)


@contextlib.contextmanager
def oracle_drafts(expected: dict[tuple, list[int]], kept: bool, vocab_size: int):
    """The assistant's passes run as they do, but each draft is replaced, at its length, by the plain engine's next
    tokens for its request (kept: every draft kept) or by tokens the model does not choose (each one + 1: none
    kept): the two bounds of a trained assistant, at the real assistant's cost."""
    real = AssistantDrafting.drafts

    def drafts(self, sequences, limit):
        out = real(self, sequences, limit)
        chosen = [expected[tuple(s.prompt)][len(s.output):len(s.output) + len(d)] for s, d in zip(sequences, out)]
        return chosen if kept else [[(token + 1) % vocab_size for token in draft] for draft in chosen]

    AssistantDrafting.drafts = drafts
    try:
        yield
    finally:
        AssistantDrafting.drafts = real


def run(model, assistant, prompts: list[list[int]], new_tokens: int, numbers: list[int], threshold: float,
        lookups: list[int], repeats: int, concurrency: int, bounds: bool = False,
        schedule: str = "constant") -> list[list[object]]:
    """The table's rows. bounds: the assistant's cases twice, its drafts replaced by oracle_drafts' ("never kept",
    "always kept"; for random weights, whose own drafts mean nothing)."""
    kinds = ["assistant, never kept", "assistant, always kept"] if bounds else ["assistant"]
    cases = {}  # (requests at once, drafts, N) -> (engine, its DraftCounts or None)
    for at_once in dict.fromkeys((1, concurrency)):
        cases[(at_once, "plain", None)] = Engine(model, None, max_batch=concurrency), None
        for n in numbers:
            for kind in kinds:
                counts = DraftCounts()
                cases[(at_once, kind, n)] = Engine(model, None, max_batch=concurrency, observer=counts,
                                                   assistant_model=assistant, num_assistant_tokens=n,
                                                   assistant_confidence_threshold=threshold,
                                                   num_assistant_tokens_schedule=schedule), counts
        for n in lookups:
            counts = DraftCounts()
            cases[(at_once, "prompt lookup", n)] = Engine(model, None, max_batch=concurrency, observer=counts,
                                                          prompt_lookup_num_tokens=n), counts

    def one(case):
        engine = cases[case][0]
        chosen = prompts[:case[0]] if case[0] > 1 else prompts
        kept = case[1].endswith("always kept")
        oracle = case[1].endswith("kept") and case[1] != "assistant"
        with oracle_drafts(expected, kept, model.config.vocab_size) if oracle else contextlib.nullcontext():
            return served(engine, chosen, new_tokens, case[0])

    plain_tokens = one((1, "plain", None))[0]
    expected = {tuple(prompt): tokens for prompt, tokens in zip(prompts, plain_tokens)}
    per_token = {case: [] for case in cases}
    outputs = {}
    for round_ in range(repeats + 1):  # a first round to warm up (packs, replay recordings), not counted
        for case in cases:
            outputs[case], seconds = one(case)
            if round_:
                per_token[case].append(seconds)
    rows = []
    for case, (_, counts) in cases.items():
        at_once, drafts, n = case
        best = min(per_token[case])
        base = min(per_token[(at_once, "plain", None)])
        kept = "-" if not counts or not counts.drafted else f"{counts.kept / counts.drafted:.0%}"
        same = sum(a == b for a, b in zip(outputs[case], outputs[(at_once, "plain", None)], strict=True))
        rows.append([at_once, drafts, "-" if n is None else n, 1 / best, 1 / statistics.median(per_token[case]),
                     kept, base / best, f"{same}/{len(outputs[case])}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=RECIPE / "model")
    parser.add_argument("--assistant", type=Path, default=RECIPE / "assistant")
    parser.add_argument("--passages-from", type=Path, default=RECIPE / "model" / "validation.txt")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--num-assistant-tokens", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--threshold", type=float, default=0.4, help="assistant_confidence_threshold")
    parser.add_argument("--schedule", choices=("constant", "heuristic"), default="constant",
                        help="num_assistant_tokens_schedule")
    parser.add_argument("--lookup", type=int, nargs="*", default=[4])
    parser.add_argument("--concurrency", type=int, default=4, help="requests at once in the batched cases")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--gpt1-bounds", action="store_true",
                        help="GPT-1's shape and a 2 x 128 assistant, random weights and prompts, the assistant's "
                             "drafts replaced by the model's own tokens (always kept) or others (never kept)")
    parser.add_argument("--tiny", action="store_true", help="--gpt1-bounds on tiny models (tests)")
    args = parser.parse_args(argv)
    apply_threads(args)
    if args.tiny or args.gpt1_bounds:
        model = random_model(DTYPES[args.dtype], tiny=args.tiny)
        assistant = random_assistant(model.dtype, 1 if args.tiny else 2, 32 if args.tiny else 128, 2)
        prompts = torch.randint(0, model.config.vocab_size, (args.num_prompts, 32),
                                generator=torch.Generator().manual_seed(0)).tolist()
        what = "random weights, random prompts"
    else:
        for folder, flag in ((args.model, "--model"), (args.assistant, "--assistant")):
            if not (folder / "config.json").is_file():
                parser.error(f"{flag} {folder}: no checkpoint there (see bench_assisted.py for how to make one)")
        model = OpenAIGPTLMHeadModel.from_pretrained(args.model, dtype=args.dtype)
        assistant = OpenAIGPTLMHeadModel.from_pretrained(args.assistant, dtype=args.dtype)
        tokenizer = OpenAIGPTTokenizer.from_pretrained(args.model)
        prompts = [tokenizer(text)["input_ids"] for text in passages(args.passages_from, args.num_prompts, 40)]
        what = "validation passages"
    rows = run(model.eval(), assistant.eval(), prompts, args.new_tokens, args.num_assistant_tokens, args.threshold,
               args.lookup, args.repeats, min(args.concurrency, len(prompts)), bounds=args.tiny or args.gpt1_bounds,
               schedule=args.schedule)
    sizes = ", ".join(f"{name} {m.config.n_layer} x {m.config.n_embd}" for name, m in (("model", model),
                                                                                      ("assistant", assistant)))
    print(f"{sizes}, {args.dtype}; {len(prompts)} prompts ({what}, {', '.join(str(len(p)) for p in prompts)} "
          f"tokens) + {args.new_tokens} greedy tokens each; threshold {args.threshold}, {args.schedule} schedule; "
          f"best of {args.repeats} alternating rounds; {machine_description()}, kernel tier {cpu_isa.level()}\n")
    print(format_table(["requests at once", "drafts", "N", "decode tok/s best", "tok/s median", "drafts kept",
                        "x plain engine", "same tokens"], rows))


if __name__ == "__main__":
    main()
