"""The `gpt-fast` command: generate text, benchmark generation, convert checkpoints, train, evaluate, serve.

    echo "The future of AI is" | gpt-fast generate --model DIR --do-sample --seed 0
    gpt-fast generate "The future of AI is" --model DIR --max-new-tokens 40
    gpt-fast generate "Hello" --model DIR --quantization int8
    gpt-fast bench [--quick] [--json out.json] [--png out.png] [--quantization none,int8,int4]
    gpt-fast convert SRC DST [--dtype bf16] [--quantization int4 --group-size 32 [--calibration TEXT]]
    gpt-fast train DATA... --out DIR (--model DIR | --config config.json) [--max-steps N ...]
    gpt-fast eval DATA... --model DIR [--seq-len N --stride N --batch-size 8 --json out.json]
    gpt-fast serve --model DIR [--host 127.0.0.1 --port 8000 --max-batch 16 --max-queue 64 --api-key KEY]

One module per command (generate.py, bench.py, convert.py, train.py, evaluate.py, serve.py), each with
add_parser(subparsers) and run(args).
Progress goes to stderr, results to stdout. Every error prints one line `gpt-fast: error: ...` and exits with a
non-zero status (2 for bad command lines, 1 otherwise); no traceback.
"""

from __future__ import annotations

import sys

from gpt_fast.cli import bench, convert, evaluate, generate, serve, train
from gpt_fast.cli.common import Parser, UsageError

COMMANDS = {"generate": generate, "bench": bench, "convert": convert, "train": train, "eval": evaluate,
            "serve": serve}


def build_parser() -> Parser:
    parser = Parser(prog="gpt-fast",
                    description="Fast OpenAI GPT (GPT-1): generate, benchmark, convert, train, evaluate, serve.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", parser_class=Parser)
    sub.required = True
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command].run(args)
    except UsageError as error:
        print(f"gpt-fast: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt-fast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as error:  # one clear line, no traceback
        message = str(error) or type(error).__name__
        print(f"gpt-fast: error: {message.splitlines()[0] if message else type(error).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
