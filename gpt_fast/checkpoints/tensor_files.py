"""Reading checkpoint tensors one at a time, straight into the target dtype and device.

safetensors files are read with plain file reads (no mmap, so the page cache never counts against the process)
in chunks converted on the fly: loading a model costs the model plus one chunk, never a float32 copy first.
Every header entry is checked against the file's size, so a truncated or corrupt file is a clear error.
`pytorch_model.bin` files are opened with torch.load(weights_only=True, mmap=True).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable, Iterator

import torch

CHUNK_BYTES = 16 << 20
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be what it claims to be."""


def _header(path: Path) -> tuple[dict, int]:
    """Returns (tensor entries, offset of the data section)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptCheckpointError(f"{path} is not a safetensors file: {size} bytes, too short for a header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8 or header_len > 100 << 20:
            raise CorruptCheckpointError(f"{path} is truncated or corrupt: header of {header_len} bytes in a "
                                         f"file of {size}")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptCheckpointError(f"{path} is corrupt: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path} is corrupt: its header is not a JSON object")
    header.pop("__metadata__", None)
    data_start, data_size = 8 + header_len, size - 8 - header_len
    for name, entry in header.items():
        dtype, shape, (begin, end) = _check_entry(path, name, entry)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise CorruptCheckpointError(
                f"{path} is truncated or corrupt: tensor {name!r} needs bytes [{begin}, {end}) of a data section "
                f"of {data_size} bytes and {nbytes} bytes for shape {entry['shape']}")
    return header, data_start


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(path: Path, name: str, entry) -> tuple[torch.dtype, list[int], list[int]]:
    """One header entry's (dtype, shape, data_offsets), each field checked for its JSON type; a malformed field is a
    CorruptCheckpointError naming the file, the tensor and the field."""
    def malformed(field: str, expected: str, value) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{path} is corrupt: tensor {name!r} has a malformed header field {field!r}: "
                                      f"expected {expected}, got {value!r}")

    if not isinstance(entry, dict):
        raise malformed("(the entry)", "an object with dtype, shape and data_offsets", entry)
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise CorruptCheckpointError(f"{path} is corrupt: tensor {name!r} has no header field {field!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise malformed("dtype", f"one of {', '.join(SAFETENSORS_DTYPES)}", dtype)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise malformed("shape", "a list of non-negative integers", shape)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets):
        raise malformed("data_offsets", "a list of two non-negative integers [begin, end]", offsets)
    return SAFETENSORS_DTYPES[dtype], shape, offsets


def _read_into(f, offset: int, dest: torch.Tensor, src_dtype: torch.dtype) -> None:
    """Fills dest (any dtype and device) from the raw src_dtype bytes at `offset` of the open file f."""
    flat = dest.view(-1)
    itemsize = torch.empty((), dtype=src_dtype).element_size()
    per_chunk = max(1, CHUNK_BYTES // itemsize)
    direct = dest.device.type == "cpu" and dest.dtype == src_dtype and dest.is_contiguous()
    f.seek(offset)
    for start in range(0, flat.numel(), per_chunk):
        n = min(per_chunk, flat.numel() - start)
        if direct:
            target = flat[start:start + n].view(torch.uint8)
            if f.readinto(memoryview(target.numpy())) != n * itemsize:
                raise CorruptCheckpointError(f"{f.name} ended early")
        else:
            raw = bytearray(n * itemsize)
            if f.readinto(raw) != len(raw):
                raise CorruptCheckpointError(f"{f.name} ended early")
            flat[start:start + n].copy_(torch.frombuffer(raw, dtype=src_dtype))


def iter_safetensors(path: Path) -> Iterator[tuple[str, tuple[int, ...], torch.dtype, Callable]]:
    """Yields (name, shape, stored dtype, load(dtype, device) -> tensor) for each tensor in the file."""
    header, data_start = _header(path)
    for name, entry in header.items():
        src_dtype, shape = SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"])
        offset = data_start + entry["data_offsets"][0]

        def load(dtype, device, shape=shape, src_dtype=src_dtype, offset=offset):
            dest = torch.empty(shape, dtype=dtype or src_dtype, device=device)
            with open(path, "rb") as f:
                _read_into(f, offset, dest, src_dtype)
            return dest

        yield name, shape, src_dtype, load


def iter_torch_bin(path: Path) -> Iterator[tuple[str, tuple[int, ...], torch.dtype, Callable]]:
    """The same for a pytorch_model.bin (loaded with weights_only=True, memory-mapped when the format allows)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as error:  # torch raises several kinds for a damaged archive
        raise CorruptCheckpointError(f"{path} could not be read as a PyTorch checkpoint: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"{path} does not hold a state dict of tensors")
    for name, tensor in state.items():
        def load(dtype, device, tensor=tensor):
            return tensor.to(device=device, dtype=dtype or tensor.dtype, copy=True)

        yield name, tuple(tensor.shape), tensor.dtype, load
