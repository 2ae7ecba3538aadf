"""gpt-fast generate: continue a prompt (argument or stdin), streaming the text to the terminal."""

from __future__ import annotations

import sys
import time

from gpt_fast.cli.common import (
    UsageError,
    add_assistant_arguments,
    add_quantization_arguments,
    assistant_kwargs,
    check_assistant_arguments,
    check_model_name,
    load_assistant,
    log,
    positive_int,
    quantization_kwargs,
)
from gpt_fast.generation.pipeline import load_tokenizer
from gpt_fast.generation.streaming import TextStreamer
from gpt_fast.models.heads import OpenAIGPTLMHeadModel
from gpt_fast.names import ATTN_IMPLEMENTATIONS


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="continue a prompt (argument or stdin), streaming to the terminal",
                         description="Continue a prompt. The prompt is the argument, or stdin when omitted.")
    gen.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    gen.add_argument("--model", required=True, help="checkpoint folder (config.json + weights) or hub name")
    gen.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    gen.add_argument("--max-new-tokens", type=positive_int, help="tokens to generate (default 50)")
    gen.add_argument("--max-length", type=positive_int, help="total length, prompt included")
    gen.add_argument("--min-new-tokens", type=int)
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--min-p", type=float, help="with --do-sample: drop tokens below min_p x the likeliest's")
    gen.add_argument("--typical-p", type=float, help="with --do-sample: locally typical sampling's mass")
    gen.add_argument("--repetition-penalty", type=float)
    gen.add_argument("--num-return-sequences", type=positive_int, default=1)
    gen.add_argument("--eos-token-id", type=int)
    gen.add_argument("--seed", type=int, help="makes sampling reproducible")
    gen.add_argument("--prompt-lookup-num-tokens", type=positive_int, metavar="N",
                     help="prompt lookup decoding: verify up to N tokens copied from the text so far per pass")
    add_assistant_arguments(gen)
    gen.add_argument("--dtype", default="float32", help="float32, bfloat16, float16, float64 or auto (default float32)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    gen.add_argument("--attn-implementation", choices=("auto",) + ATTN_IMPLEMENTATIONS, default="auto")
    gen.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")
    add_quantization_arguments(gen)


def read_stdin() -> str:
    """stdin as UTF-8 text; binary data is a one-line error, not a decoding traceback."""
    stream = getattr(sys.stdin, "buffer", None)
    data = stream.read() if stream is not None else sys.stdin.read()
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UsageError(f"gpt-fast generate: stdin is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                             f"{error.start}); pipe a text prompt") from None
    if "\x00" in text:
        raise UsageError(f"gpt-fast generate: stdin holds binary data (a NUL byte at offset {text.index(chr(0))}); "
                         "pipe a text prompt")
    return text


def read_prompt(args) -> str:
    if args.prompt is not None:
        prompt = args.prompt
    elif sys.stdin is None or sys.stdin.isatty():
        raise UsageError("gpt-fast generate: give a prompt as an argument or on stdin (see gpt-fast generate --help)")
    else:
        prompt = read_stdin()
    prompt = prompt.rstrip("\n")
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    return prompt


def generation_kwargs(args) -> dict:
    names = ("max_new_tokens", "max_length", "min_new_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p",
             "repetition_penalty", "eos_token_id", "seed", "prompt_lookup_num_tokens")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    kwargs.update(assistant_kwargs(args))
    if args.max_new_tokens is None and args.max_length is None:
        kwargs["max_new_tokens"] = 50
    kwargs["do_sample"] = args.do_sample
    kwargs["num_return_sequences"] = args.num_return_sequences
    return kwargs


class PromptEchoStreamer(TextStreamer):
    """Streams the new text after the prompt as the user typed it. generate() hands the streamer the prompt only
    once it has checked every argument, so an argument error is reported before anything is printed."""

    def __init__(self, prompt: str, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.prompt = prompt

    def put(self, value) -> None:
        if self.next_is_prompt:
            print(self.prompt, end="", flush=True)
        super().put(value)


def run(args) -> int:
    check_assistant_arguments(args, "generate")
    prompt = read_prompt(args)
    check_model_name(args.model)
    start = time.perf_counter()
    log(f"loading {args.model} ...")
    attn = None if args.attn_implementation == "auto" else args.attn_implementation
    model = OpenAIGPTLMHeadModel.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                                 attn_implementation=attn, **quantization_kwargs(args))
    assistant = load_assistant(args, attn_implementation=attn)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    quantized = "" if model.quantization is None else f", {model.quantization.scheme}"
    log(f"loaded in {time.perf_counter() - start:.1f} s ({model.dtype}{quantized}, {model.device})")
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if input_ids.shape[-1] == 0:
        raise ValueError("the prompt is empty after tokenization")
    kwargs = generation_kwargs(args)
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    stream = not args.no_stream and args.num_return_sequences == 1
    if stream:
        kwargs["streamer"] = PromptEchoStreamer(prompt, tokenizer)
    start = time.perf_counter()
    sequences = model.generate(input_ids, **kwargs).cpu()
    elapsed = time.perf_counter() - start
    new = sequences.shape[1] - input_ids.shape[1]
    if not stream:
        prompt_chars = len(tokenizer.decode(input_ids[0].tolist(), skip_special_tokens=True))
        for i, sequence in enumerate(sequences):
            if len(sequences) > 1:
                print(f"=== sequence {i + 1} ===")
            print(prompt + tokenizer.decode(sequence.tolist(), skip_special_tokens=True)[prompt_chars:], flush=True)
    log(f"{new} new tokens x {len(sequences)} in {elapsed:.2f} s ({new * len(sequences) / elapsed:.1f} tokens/s)")
    return 0
