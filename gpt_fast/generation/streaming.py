"""Streamers: receive tokens as generate() makes them (transformers' protocol: put(token_ids), then end()).

- TextStreamer: decodes the tokens of one sequence as they come and hands each finished piece of text to
  `on_text(text, stream_end)`; by default prints it (to `file`, flushed). Pass `callback=` to receive the pieces
  instead of printing them.
- TextIteratorStreamer: the same pieces through an iterator, for a consumer thread (generate runs in another).

With skip_prompt=True the prompt is not output but stays the decoding context, so the new text starts with the
space (or none) it has after the prompt. Text is released only up to the last space or newline (the next token
may still change a partial word, e.g. by BPE merges or a multi-byte character), and everything left is released
at end().
"""

from __future__ import annotations

import queue
import sys
from typing import Callable

import torch


class TextStreamer:
    def __init__(self, tokenizer, skip_prompt: bool = False, *, callback: Callable[[str, bool], None] | None = None,
                 file=None, **decode_kwargs):
        if not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"tokenizer must have a decode method, got {type(tokenizer).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable as callback(text, stream_end)")
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.callback = callback
        self.file = file
        self._reset()

    def _reset(self) -> None:
        self.token_ids: list[int] = []
        self.printed = 0  # characters of the decoded text already released
        self.next_is_prompt = True

    def put(self, value: torch.Tensor) -> None:
        """value: (1, T) or (T,) token ids (the prompt first, then one token per call). One sequence only."""
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if value.dim() > 1:
            if value.shape[0] != 1:
                raise ValueError(f"{type(self).__name__} streams one sequence; got a batch of {value.shape[0]}")
            value = value[0]
        is_prompt, self.next_is_prompt = self.next_is_prompt, False
        self.token_ids.extend(value.tolist())
        if is_prompt and self.skip_prompt:  # kept as decoding context (so the first new word keeps its space)
            self.printed = len(self.tokenizer.decode(self.token_ids, **self.decode_kwargs))
            return
        text = self.tokenizer.decode(self.token_ids, **self.decode_kwargs)
        if text.endswith("\n"):
            stable = len(text)
        elif text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            stable = self.printed
        else:
            stable = max(self.printed, text.rfind(" ") + 1)
        if stable > self.printed:
            piece, self.printed = text[self.printed:stable], stable
            self.on_text(piece, stream_end=False)

    def end(self) -> None:
        """Releases whatever text is left and gets ready for the next generate call."""
        text = self.tokenizer.decode(self.token_ids, **self.decode_kwargs) if self.token_ids else ""
        piece = text[self.printed:]
        self._reset()
        self.on_text(piece, stream_end=True)

    def on_text(self, text: str, stream_end: bool = False) -> None:
        if self.callback is not None:
            self.callback(text, stream_end)
            return
        out = self.file or sys.stdout
        print(text, end="" if not stream_end else "\n", file=out, flush=True)


class TextIteratorStreamer(TextStreamer):
    """Iterate over the text pieces: `for piece in streamer: ...` while generate runs in another thread.

    timeout: seconds to wait for each piece before queue.Empty is raised (None waits forever).
    """

    _STOP = object()

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.pieces: queue.Queue = queue.Queue()
        self.timeout = timeout

    def on_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.pieces.put(text)
        if stream_end:
            self.pieces.put(self._STOP)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        piece = self.pieces.get(timeout=self.timeout)
        if piece is self._STOP:
            raise StopIteration
        return piece
