"""Assisted decoding (generate(assistant_model=...)) and prompt lookup against plain greedy decoding, batch 1, on a
trained model and a smaller trained assistant with the same tokenizer, alternating in one run.

    python benchmarks/bench_assisted.py [--model DIR] [--assistant DIR] [--prompts FILE | --passages-from FILE]
                                        [--new-tokens 128]
                                        [--num-assistant-tokens 2 4 8] [--lookup 4] [--dtype float32]
                                        [--repeats 3] [--threads 2]

Defaults: the Shakespeare recipe's model (`gpt-fast train --recipe shakespeare`) and an assistant trained on the
same corpus and tokenizer (docs/generation.md's Assisted decoding entry has the command), prompted with passages of the
recipe's validation text (plays the models never saw). Random weights would say nothing here: how many drafts the
model keeps is the whole question. The table gives tokens/s, the share of draft tokens kept, the model's passes
(prefill excluded) per new token, and for how many prompts the tokens are plain decoding's (a pass over several
tokens rounds otherwise than a one-token step, which can flip a near-tie: rarely in float32, more often in
bfloat16). --gpt1-projection times the same passes on GPT-1's shape and projects its tokens/s from these draft
outcomes.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
from timing import best_and_median, format_table, machine_description, time_alternating

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTTokenizer
from gpt_fast.generation.assistant import AssistantDrafter
from gpt_fast.generation.decoder import IncrementalDecoder, decode_plan
from gpt_fast.generation.kv_cache import StaticKVCache
from gpt_fast.generation.prompt_lookup import PromptLookupDrafter
from gpt_fast.generation.replayed_step import ReplayedExtend, ReplayedStep
from gpt_fast.ops import cpu_isa
from gpt_fast.training.recipes.shakespeare_corpus import default_cache_dir

RECIPE = default_cache_dir()  # the Shakespeare recipe's folder ($XDG_CACHE_HOME respected)


def passages(path: Path, count: int, words: int) -> list[str]:
    """`count` passages of `words` words spread through the text file at path."""
    text = path.read_text().split()
    stride = max(1, (len(text) - words) // count)
    return [" ".join(text[i * stride:i * stride + words]) for i in range(count)]


@contextlib.contextmanager
def draft_outcomes():
    """Records (kept, drafted) of every verification round of both drafters."""
    rounds = []
    originals = {cls: cls.update for cls in (AssistantDrafter, PromptLookupDrafter)}

    def recorder(real):
        return lambda self, sequence, kept, drafted: rounds.append((kept, drafted)) or real(self, sequence, kept,
                                                                                          drafted)
    for cls, real in originals.items():
        cls.update = recorder(real)
    try:
        yield rounds
    finally:
        for cls, real in originals.items():
            cls.update = real


def run(model, assistant, prompts: list[torch.Tensor], new_tokens: int, numbers: list[int], lookups: list[int],
        repeats: int) -> list[list[object]]:
    greedy = dict(max_new_tokens=new_tokens, do_sample=False)
    plain = [model.generate(ids, **greedy) for ids in prompts]
    cases = {("plain", "-"): {}}
    for n in numbers:
        cases[("assistant", n)] = dict(assistant_model=assistant, num_assistant_tokens=n,
                                       assistant_confidence_threshold=0.0)
    cases[("assistant, threshold 0.4", numbers[-1])] = dict(assistant_model=assistant,
                                                            num_assistant_tokens=numbers[-1])
    for n in lookups:
        cases[("prompt lookup", n)] = dict(prompt_lookup_num_tokens=n)

    def candidate(kwargs):
        def call():
            for ids in prompts:
                model.generate(ids, **greedy, **kwargs)
        return call

    times = best_and_median(time_alternating({c: candidate(kw) for c, kw in cases.items()}, repeats=repeats))
    total = sum(int(p.shape[1]) - int(ids.shape[1]) for ids, p in zip(prompts, plain))
    rows, outcomes = [], {}
    for case, kwargs in cases.items():
        with draft_outcomes() as rounds:
            same = sum(torch.equal(model.generate(ids, **greedy, **kwargs), expected)
                       for ids, expected in zip(prompts, plain))
        kept, drafted = sum(k for k, _ in rounds), sum(d for _, d in rounds)
        passes = total - len(prompts) - kept  # each pass emits one token of its own plus the drafts it kept
        outcomes[case] = (rounds, passes - len(rounds))  # the rounds, and the plain steps between them
        best, median = times[case]["best"], times[case]["median"]
        rows.append([case[0], case[1], total / best, total / median, times[("plain", "-")]["best"] / best,
                     f"{kept / drafted:.0%}" if drafted else "-", f"{passes / (total - len(prompts)):.2f}",
                     f"{same}/{len(prompts)}"])
    return rows, outcomes


@torch.inference_mode()  # as generate() runs (grad mode would refuse the replay and take autograd's paths)
def pass_times(model, rows: int, repeats: int) -> dict[int, float]:
    """Seconds of one pass of `model` over 1..rows new tokens at position ~64 (1: the decode step; more: the
    verification pass, IncrementalDecoder.extend; both replayed, as generate runs them), each rewound after it."""
    prompt = torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    cache = StaticKVCache.for_model(model.config, 1, 64 + rows, model.dtype, prompt.device)
    decoder = IncrementalDecoder(model, cache, decode_plan(model, prompt.device))
    decoder.prefill(prompt, torch.tensor([64]), True)
    step, extend, token = ReplayedStep(decoder, required=True), ReplayedExtend(decoder), prompt[:, -1]

    def one_pass(n):
        def call():
            step(token) if n == 1 else extend(prompt[:, -n:])
            decoder.rewind(n)
        return call

    samples = time_alternating({n: one_pass(n) for n in range(1, rows + 1)}, repeats=repeats, warmup=2,
                               min_time=0.2)
    assert step.program is not None and all(r.program is not None for r in extend.by_count.values())  # replayed
    return {n: t["best"] for n, t in best_and_median(samples).items()}


def gpt1_projection(assistant_config, dtype, outcomes: dict, repeats: int) -> str:
    """Tokens/s that GPT-1's shape would reach with these draft outcomes: each round's verification pass and the
    assistant's passes timed on GPT-1-shaped models (random weights: only the time of a pass matters here)."""
    gpt1 = OpenAIGPTLMHeadModel(OpenAIGPTConfig()).to(dtype).eval()
    small = OpenAIGPTLMHeadModel(OpenAIGPTConfig(n_layer=assistant_config.n_layer, n_embd=assistant_config.n_embd,
                                                 n_head=assistant_config.n_head)).to(dtype).eval()
    longest = max((d for rounds, _ in outcomes.values() for _, d in rounds), default=1)
    big, little = pass_times(gpt1, longest + 1, repeats), pass_times(small, 1, repeats)
    rows = []
    for case, (rounds, plain_steps) in outcomes.items():
        tokens = plain_steps + sum(k + 1 for k, _ in rounds)
        seconds = plain_steps * big[1] + sum(big[d + 1] + (d * little[1] if case[0] != "prompt lookup" else 0)
                                             for _, d in rounds)
        rows.append([case[0], case[1], tokens / seconds, big[1] * tokens / seconds])
    costs = ", ".join(f"{n} rows {t * 1e3:.2f} ms" for n, t in big.items())
    return (f"GPT-1's shape ({str(dtype).removeprefix('torch.')}), passes timed here: decode step / verification "
            f"pass of {costs}; the assistant's shape with GPT-1's vocabulary: {little[1] * 1e3:.2f} ms a step. "
            "Projected with the draft outcomes above (the assistant's passes cost its step each; prompt lookup's "
            "search is left out):\n\n" + format_table(["drafts", "N", "projected tok/s", "x plain"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=RECIPE / "model")
    parser.add_argument("--assistant", type=Path, default=RECIPE / "assistant")
    parser.add_argument("--prompts", type=Path, help="a text file, one prompt a line")
    parser.add_argument("--passages-from", type=Path, default=RECIPE / "model" / "validation.txt",
                        help="without --prompts: 40-word passages of this text (default: the recipe's validation text)")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--num-assistant-tokens", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--lookup", type=int, nargs="*", default=[4])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpt1-projection", action="store_true",
                        help="also time the passes on GPT-1's shape and project its tokens/s from the draft outcomes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for folder, what in ((args.model, "--model"), (args.assistant, "--assistant")):
        if not (folder / "config.json").is_file():
            parser.error(f"{what} {folder}: no checkpoint there (see the module docstring for how to make one)")
    model = OpenAIGPTLMHeadModel.from_pretrained(args.model, dtype=args.dtype).eval()
    assistant = OpenAIGPTLMHeadModel.from_pretrained(args.assistant, dtype=args.dtype).eval()
    tokenizer = OpenAIGPTTokenizer.from_pretrained(args.model)
    texts = (args.prompts.read_text().splitlines()[:args.num_prompts] if args.prompts
             else passages(args.passages_from, args.num_prompts, 40))
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"] for text in texts]
    rows, outcomes = run(model, assistant, prompts, args.new_tokens, args.num_assistant_tokens, args.lookup,
                         args.repeats)
    sizes = ", ".join(f"{what} {m.config.n_layer} x {m.config.n_embd}" for what, m in (("model", model),
                                                                                     ("assistant", assistant)))
    print(f"{sizes}, {args.dtype}; {len(prompts)} prompts ({', '.join(str(p.shape[1]) for p in prompts)} tokens) "
          f"+ {args.new_tokens} greedy tokens each, batch 1, best of {args.repeats} alternating rounds; "
          f"{machine_description()}, kernel tier {cpu_isa.level()}\n")
    print(format_table(["drafts", "N", "tok/s best", "tok/s median", "x plain", "drafts kept", "passes / token",
                        "same tokens"], rows))
    if args.gpt1_projection:
        print("\n" + gpt1_projection(assistant.config, model.dtype, outcomes, args.repeats))


if __name__ == "__main__":
    main()
