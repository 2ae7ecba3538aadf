"""model.generate_batch (continuous batching on gpt_fast's serving engine) against the other ways to generate for
many prompts of different lengths, GPT-1's shape with random weights, greedy, alternating in one run:

  gpt_fast generate_batch          the prompts decoded together, joining and leaving the batch as they go
  gpt_fast generate, one by one    generate() per prompt
  gpt_fast generate, padded batch  one generate() over the left-padded prompts (all run to the longest)
  transformers generate_batch      transformers' continuous batching on its own model (same weights)

    python benchmarks/bench_generate_batch.py [--prompts 16] [--new-tokens 32] [--max-batch 16] [--dtype float32]
                                              [--repeats 3] [--threads 2] [--tiny] [--no-transformers]

Output tokens per second (the prompts' new tokens over wall time), best and median of the rounds, and the ratio to
transformers' generate_batch. Every gpt_fast run's tokens are checked against generate() per prompt first.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import format_table, machine_description, time_alternating

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.cli.benchmark import make_transformers_model
from gpt_fast.ops import cpu_isa

TINY = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=128)


def make_prompts(count: int, vocab: int, longest: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(max(1, longest // 8), longest + 1, (count,), generator=g).tolist()
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (B, T) and their attention mask."""
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, T - len(prompt):] = torch.tensor(prompt)
        mask[row, T - len(prompt):] = 1
    return ids, mask


def candidates(model, theirs, prompts, new_tokens: int, max_batch: int) -> dict:
    ids, mask = padded(prompts)
    found = {
        "gpt_fast generate_batch": lambda: model.generate_batch(prompts, max_new_tokens=new_tokens,
                                                                max_batch=max_batch),
        "gpt_fast generate, one by one": lambda: [model.generate(torch.tensor([p]), max_new_tokens=new_tokens)
                                                  for p in prompts],
        "gpt_fast generate, padded batch": lambda: model.generate(ids, attention_mask=mask,
                                                                  max_new_tokens=new_tokens, pad_token_id=0),
    }
    if theirs is not None:
        found["transformers generate_batch"] = lambda: transformers_batch(theirs, prompts, new_tokens)
    return found


def transformers_batch(theirs, prompts, new_tokens: int) -> dict:
    """transformers' continuous batching packs the running prompts into one row, which its OpenAIGPT cannot take
    past n_positions tokens (a shape error): max_batch_tokens keeps the packed row within them. Its paged cache is
    sized to the requests (one page of 256 tokens per 256 tokens of each; by default it fills 90% of free memory,
    ~1.5 s of zeroing per call here). A new GenerationConfig per call: generate_batch writes eos_token_id=-1 into
    the one it is given."""
    import transformers

    config = transformers.GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    pages = sum(-(-(len(p) + new_tokens) // 256) for p in prompts)
    batching = transformers.ContinuousBatchingConfig(max_batch_tokens=theirs.config.n_positions, num_blocks=pages)
    return theirs.generate_batch(prompts, generation_config=config, continuous_batching_config=batching)


def check(model, theirs, prompts, new_tokens: int, max_batch: int) -> None:
    """generate_batch's tokens are generate()'s per prompt; transformers' generate_batch ran every request (a failed
    request is returned with an error and no tokens, and would time as fast)."""
    result = model.generate_batch(prompts, max_new_tokens=new_tokens, max_batch=max_batch)
    for i, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens)[0, len(prompt):].tolist()
        assert result[f"req_{i}"].generated_tokens == alone, f"prompt {i}: generate_batch differs from generate"
    if theirs is not None:
        agree = 0
        for key, out in transformers_batch(theirs, prompts, new_tokens).items():
            assert out.error is None and len(out.generated_tokens) == new_tokens, (key, out.error)
            agree += sum(a == b for a, b in zip(out.generated_tokens, result[key].generated_tokens))
        print(f"transformers' generate_batch agrees with gpt_fast's on {agree} of {len(prompts) * new_tokens} tokens")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--longest", type=int, default=128, help="prompt lengths are drawn from [longest/8, longest]")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a small model (a smoke test)")
    parser.add_argument("--no-transformers", action="store_true", help="leave transformers' generate_batch out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = OpenAIGPTConfig(**(TINY if args.tiny else {}))
    model = OpenAIGPTLMHeadModel(config).to(getattr(torch, args.dtype)).eval()
    theirs = None if args.no_transformers else make_transformers_model(model)  # the same weights (None: missing)
    if theirs is not None:
        theirs.to(model.dtype)
    prompts = make_prompts(args.prompts, config.vocab_size, min(args.longest, config.n_positions - args.new_tokens))
    check(model, theirs, prompts, args.new_tokens, args.max_batch)
    with torch.inference_mode():
        seconds = time_alternating(candidates(model, theirs, prompts, args.new_tokens, args.max_batch),
                                   repeats=args.repeats)
    tokens = args.prompts * args.new_tokens
    base = "transformers generate_batch" if theirs is not None else "gpt_fast generate, one by one"
    rows = [[name, f"{tokens / min(s):.0f}", f"{tokens / statistics.median(s):.0f}",
             f"{statistics.median(seconds[base]) / statistics.median(s):.2f}x"] for name, s in seconds.items()]
    print(f"{machine_description()}, kernel tier {cpu_isa.level()}; {args.dtype}; {args.prompts} prompts of "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.new_tokens} new tokens each, greedy, "
          f"max_batch {args.max_batch}; {args.repeats} rounds")
    print(format_table(["method", "tokens/s (best)", "tokens/s (median)", f"speed vs {base} (median)"], rows))


if __name__ == "__main__":
    main()
