"""Training data: token ids from text files, folders or .bin files, cut into rows of seq_len + 1 tokens, read in
an order that depends only on the seed and the number of rows already read (the data position), so a resumed
run, or one with more processes, reads exactly the rows an uninterrupted single-process run would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TEXT_SUFFIXES = (".txt", ".text", ".md")


def data_files(paths: list[str]) -> list[Path]:
    """The files paths name: files as given, folders as their text and .bin files (recursively, sorted)."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + (".bin",))
            if not found:
                raise FileNotFoundError(f"no text (*.txt, *.text, *.md) or .bin files in the folder {name!r}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {name!r}")
    return files


def load_tokens(paths: list[str], tokenizer=None) -> np.ndarray:
    """All the token ids, file after file: .bin files are uint16 ids (as nanoGPT writes them); any other file is
    UTF-8 text, encoded with tokenizer (needed then). Returns a 1-D int64 array."""
    parts = []
    for path in data_files(paths):
        if path.suffix == ".bin":
            if path.stat().st_size % 2:
                raise ValueError(f"{path} holds an odd number of bytes: not uint16 token ids")
            parts.append(np.fromfile(path, dtype=np.uint16).astype(np.int64))
            continue
        if tokenizer is None:
            raise ValueError(f"{path} is text and no tokenizer was given")
        parts.append(np.asarray(tokenizer(path.read_text(encoding="utf-8"))["input_ids"], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class TokenRows:
    """The token stream cut into rows of seq_len + 1 tokens (inputs and their next tokens), shuffled per epoch.

    Row number r of the run (0, 1, 2, ... over all epochs) is row perm_e[r % n] of the stream, with
    e = r // n and perm_e a permutation drawn from seed + e; shuffle=False reads the rows in order."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int = 0, shuffle: bool = True, name: str = "data"):
        self.tokens = torch.from_numpy(np.ascontiguousarray(tokens))
        self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
        self.num_rows = (len(tokens) - 1) // seq_len if len(tokens) else 0
        if self.num_rows < 1:
            raise ValueError(f"the {name} has {len(tokens)} tokens; a row of seq_len={seq_len} needs {seq_len + 1}")
        self._permutation = (-1, None)  # (epoch, its permutation)

    def check_vocabulary(self, vocab_size: int, name: str = "data") -> None:
        if len(self.tokens) and int(self.tokens.max()) >= vocab_size:
            raise ValueError(f"the {name} holds token id {int(self.tokens.max())}, outside the model's vocabulary "
                             f"of {vocab_size}")

    def _row_index(self, r: int) -> int:
        if not self.shuffle:
            return r % self.num_rows
        epoch = r // self.num_rows
        if self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._permutation = (epoch, torch.randperm(self.num_rows, generator=generator))
        return int(self._permutation[1][r % self.num_rows])

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows start .. start + count - 1 of the run -> (inputs (count, T), next tokens (count, T)), int64."""
        T = self.seq_len
        indices = map(self._row_index, range(start, start + count))
        rows = torch.stack([self.tokens[i * T:i * T + T + 1] for i in indices])  # (count, T + 1)
        return rows[:, :-1], rows[:, 1:]
