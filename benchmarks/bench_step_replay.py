"""Replayed decode steps (generate's default on the CPU, gpt_fast/generation/replayed_step.py) against the plain
step (step_replay=False), which walks the model's Python for every token: decode tokens/s of GPT-1's shape (random
weights), alternating in one run, per weight format and batch size.

    python benchmarks/bench_step_replay.py [--dtype bfloat16] [--quantization none int8 int4-a8] [--batch 1 8]
                                           [--new-tokens 128] [--repeats 4] [--threads 2] [--tiny]

Decode time is read from a streamer's token times (the first token and the prefill excluded); each round runs the
two alternately and every replayed run's tokens are checked against the plain run's. The machine line names the CPU
and the kernel tier.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from timing import format_table, machine_description

from gpt_fast import OpenAIGPTConfig, OpenAIGPTLMHeadModel
from gpt_fast.cli.benchmark import TimingStreamer
from gpt_fast.ops import cpu_isa

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = {"plain": False, "replayed": True}  # True: an error where the step cannot be replayed


def seconds_per_step(model, ids, new_tokens: int, step_replay: bool | None) -> tuple[float, torch.Tensor]:
    streamer = TimingStreamer()  # put(prompt) first, then one put per step
    transformer, walks = model.transformer, []

    def counted_run_layers(*args, **kwargs):  # an instance attribute, not a hook: hooks stop replays
        walks.append(1)
        return type(transformer).run_layers(transformer, *args, **kwargs)

    transformer.run_layers = counted_run_layers
    try:
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=streamer,
                             step_replay=step_replay)
    finally:
        del transformer.run_layers
    # the prefill, then every step; replayed: the first step and the recorded one only (run() asks for 3+ tokens)
    expected = 3 if step_replay else new_tokens
    if len(walks) != expected:
        raise AssertionError(f"step_replay={step_replay}: the layer loop ran {len(walks)} times, expected {expected}")
    return (streamer.times[-1] - streamer.times[1]) / (new_tokens - 1), out


# --tiny: a smoke test; weights drawn wider than GPT-1's 0.02 so that greedy text does not repeat one token
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 500, "n_positions": 256, "initializer_range": 0.5}


def run(dtype: torch.dtype, schemes: list[str], batches: list[int], new_tokens: int, repeats: int,
        tiny: bool = False) -> str:
    if new_tokens < 3:  # timed from the second token to the last, over at least one replayed step
        raise ValueError(f"new_tokens must be at least 3, got {new_tokens}")
    torch.manual_seed(0)
    base = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**(TINY if tiny else {}))).to(dtype).eval()
    rows = []
    for scheme in schemes:
        model = base if scheme == "none" else copy.deepcopy(base).quantize(scheme)
        for batch in batches:
            ids = torch.randint(0, model.config.vocab_size, (batch, 32), generator=torch.Generator().manual_seed(0))
            samples = {mode: [] for mode in MODES}
            outputs = {}
            for _ in range(repeats + 1):  # the first round warms up
                for mode, flag in MODES.items():
                    seconds, outputs[mode] = seconds_per_step(model, ids, new_tokens, flag)
                    samples[mode].append(seconds)
                if not torch.equal(outputs["replayed"], outputs["plain"]):
                    raise AssertionError(f"{scheme}, batch {batch}: replayed tokens differ from the plain step's")
            best = {mode: min(s[1:]) for mode, s in samples.items()}
            median = {mode: statistics.median(s[1:]) for mode, s in samples.items()}
            rows.append([scheme, batch, batch / best["plain"], batch / best["replayed"],
                         best["plain"] / best["replayed"], median["plain"] / median["replayed"]])
        del model
    header = ["weights", "batch", "plain tok/s", "replayed tok/s", "x best", "x median"]
    shape = "a tiny model" if tiny else "GPT-1 shape"
    return (f"{shape}, random weights, {str(dtype).removeprefix('torch.')}, 32-token prompt + {new_tokens} greedy "
            f"tokens, decode tok/s, best of {repeats} alternating rounds; {machine_description()}, kernel tier "
            f"{cpu_isa.level()}\n\n" + format_table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--quantization", nargs="+", default=["none", "int8", "int4-a8"],
                        choices=("none", "int8", "int4", "int4-a8"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model (a smoke test, no figures)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        try:
            print(run(DTYPES[args.dtype], args.quantization, args.batch, args.new_tokens, args.repeats, args.tiny))
        except ValueError as error:  # a bad argument, or a step that cannot be replayed
            parser.error(str(error))


if __name__ == "__main__":
    main()
