"""The real CUDA kernel source (csrc/cuda/*.cu and their headers) run on CPU threads through the SIMT test layer
(tests/simt/simt.h), built with g++ under ThreadSanitizer and UBSan (-fsanitize=bounds-strict), checked against
gpt_fast.ops.reference with the accuracy criterion of tests/accuracy.py. Small shapes with ragged tails, padded rows
and split KV caches; one test builds a copy with one __syncthreads() removed and expects the layer to catch it."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from accuracy import assert_within_pytorch_error, upcast
from op_samples import _quantized_weight, quantized_expected, sample_inputs

from gpt_fast.ops import reference

ROOT = Path(__file__).resolve().parents[1]
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"

pytestmark = [
    pytest.mark.simt,
    pytest.mark.skipif(shutil.which("g++") is None or not (CUDA_INCLUDE / "cuda_bf16.h").exists(),
                       reason="needs g++ and the CUDA headers (cuda_bf16.h)"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SANITIZERS = ["-fsanitize=thread,undefined,bounds-strict", "-fno-sanitize-recover=undefined,bounds-strict"]
ENV = {**os.environ,
       "TSAN_OPTIONS": f"halt_on_error=1 exitcode=66 suppressions={ROOT / 'tests' / 'simt' / 'tsan.supp'}",
       "UBSAN_OPTIONS": "halt_on_error=1 print_stacktrace=1"}


def build(out: Path, *defines: str, source: str = "run_kernels.cpp") -> Path:
    """Builds a harness of tests/simt/ under the sanitizers (tests/test_cuda_simt_train.py builds its own)."""
    cmd = ["g++", "-std=c++20", "-O1", "-g1", *SANITIZERS, f"-I{CUDA_INCLUDE}", f"-I{ROOT / 'csrc'}", *defines,
           str(ROOT / "tests" / "simt" / source), "-o", str(out), "-pthread"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


_BUILDS = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)  # g++ compiles on one core


def start_build(out: Path, *defines: str, source: str = "run_kernels.cpp") -> Future:
    """build() on a pool thread: a file's harness and its copies with a barrier removed compile side by side, and
    the copies while the first tests run (each takes ~10 s under the sanitizers)."""
    return _BUILDS.submit(build, out, *defines, source=source)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("simt")
    started = {"harness": start_build(folder / "run_kernels"),
               "nosync": start_build(folder / "run_kernels_nosync", "-DGF_DROP_SYNC=1")}
    yield started
    for future in started.values():
        future.cancel()  # one no test asked for (a -k selection) and not yet begun


@pytest.fixture(scope="module")
def harness(builds):
    return builds["harness"].result()


def save(folder: Path, **tensors):
    for name, t in tensors.items():
        t.contiguous().view(-1).view(torch.uint8).numpy().tofile(folder / name)


def load(folder: Path, name: str, dtype, shape):
    raw = np.fromfile(folder / name, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def run(binary: Path, folder: Path, op: str, dtype, *args, check=True):
    res = subprocess.run([str(binary), op, str(dtype).removeprefix("torch."), str(folder), *map(str, args)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr[-6000:]
    return res


def gen(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def check_accuracy(actual, fn, inputs, dtype):
    """The accuracy criterion: kernel vs the reference on upcast inputs, bounded by PyTorch's own error."""
    ref = fn(*upcast(*inputs, dtype=dtype))
    same = fn(*inputs)
    assert_within_pytorch_error(actual, ref, same)


@pytest.mark.parametrize("dtype", DTYPES)
# C = 768: register-cached rows (4 chunks per lane in bf16/fp16, 8 in fp32); 100: scalar path in bf16/fp16, 2
# chunks in fp32; 1032: 8 chunks in bf16/fp16, scalar in fp32; 2056: scalar path everywhere.
# With residual dropout (p, seed; the seed passed as its uint64 value): the vectorised variant's block per 4
# elements and the generic one's block per element, against the reference fed the oracle's mask.
@pytest.mark.parametrize("rows, C, has_bias, p, seed", [
    (5, 768, True, 0, 0), (3, 100, False, 0, 0), (2, 1032, True, 0, 0), (2, 2056, True, 0, 0),
    (5, 768, True, 0.1, 17), (3, 100, False, 0.5, -1), (3, 7, True, 0.3, 2**63 - 1)])
def test_add_layernorm(harness, tmp_path, dtype, rows, C, has_bias, p, seed):
    x, res, bias = gen(rows, C, dtype=dtype, seed=1), gen(rows, C, dtype=dtype, seed=2), gen(C, dtype=dtype, seed=3)
    w, b = 1 + 0.1 * gen(C, dtype=dtype, seed=4), gen(C, dtype=dtype, seed=5)
    save(tmp_path, x=x, residual=res, weight=w, ln_bias=b, **({"bias": bias} if has_bias else {}))
    run(harness, tmp_path, "add_layernorm", dtype, rows, C, int(has_bias), 1e-5, p, seed % 2**64)
    out = load(tmp_path, "out", dtype, (rows, C))
    def fn(x, r, bi, w, b):
        return reference.add_layernorm(x, r, bi, w, b, 1e-5, p, seed)
    check_accuracy(out, fn, [x, res, bias if has_bias else None, w, b], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, N", [(4, 64), (3, 50), (1, 7)])
def test_bias_gelu(harness, tmp_path, dtype, rows, N):
    x, bias = 3 * gen(rows, N, dtype=dtype, seed=6), gen(N, dtype=dtype, seed=7)
    save(tmp_path, x=x, bias=bias)
    run(harness, tmp_path, "bias_gelu", dtype, rows * N, N)
    check_accuracy(load(tmp_path, "out", dtype, (rows, N)), reference.bias_gelu, [x, bias], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, N", [(4, 64), (3, 50), (1, 7)])  # vectorised, scalar (50 % 8), one short row
def test_bias_gelu_backward(harness, tmp_path, dtype, rows, N):
    grad, x = gen(rows, N, dtype=dtype, seed=20), 3 * gen(rows, N, dtype=dtype, seed=21)
    bias = gen(N, dtype=dtype, seed=22)
    save(tmp_path, grad_out=grad, x=x, bias=bias)
    run(harness, tmp_path, "bias_gelu_backward", dtype, rows * N, N)
    check_accuracy(load(tmp_path, "grad_x", dtype, (rows, N)), reference.bias_gelu_backward, [grad, x, bias], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu_backward_samples(harness, tmp_path, dtype):
    """The op's sample_inputs (tests/op_samples.py): awkward widths, 3-D, non-finite inputs (NaN gradients)."""
    for sample in sample_inputs("bias_gelu_backward", dtype):
        grad, x, bias = sample.args
        if x.numel() > 4096:
            continue  # one CPU thread per CUDA thread: keep it small
        save(tmp_path, grad_out=grad, x=x, bias=bias)
        run(harness, tmp_path, "bias_gelu_backward", dtype, x.numel(), x.shape[-1])
        check_accuracy(load(tmp_path, "grad_x", dtype, tuple(x.shape)), reference.bias_gelu_backward,
                       [grad, x, bias], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layernorm_backward_samples(harness, tmp_path, dtype):
    """The op's sample_inputs (tests/op_samples.py) that fit the layer: C = 1, 48 (no bias), 80, 768, large mean;
    more rows than warps would be slow here, the partial-row sums are checked by rows > 4 (several warps)."""
    for sample in sample_inputs("add_layernorm_backward", dtype):
        grad, x, res, bias, w, eps, *dropout = sample.args  # dropout: () or (dropout_p, seed)
        p, seed = dropout or (0.0, 0)
        rows, C = x.shape
        if rows * C > 8000:
            continue  # one CPU thread per CUDA thread: keep it small
        save(tmp_path, grad_out=grad, x=x, residual=res, weight=w, **({"bias": bias} if bias is not None else {}))
        run(harness, tmp_path, "add_layernorm_backward", dtype, rows, C, int(bias is not None), eps, p, seed % 2**64)
        actual = [load(tmp_path, "grad_v", dtype, (rows, C)), load(tmp_path, "grad_weight", dtype, (C,)),
                  load(tmp_path, "grad_ln_bias", dtype, (C,))]
        if p:
            actual.append(load(tmp_path, "grad_residual", dtype, (rows, C)))
        expected = reference.add_layernorm_backward(*upcast(grad, x, res, bias, w, dtype=dtype), eps, p, seed)
        same = reference.add_layernorm_backward(grad, x, res, bias, w, eps, p, seed)
        if not p:  # the kernel leaves the empty grad_residual out
            expected, same = expected[:3], same[:3]
        for i, (a, e, s) in enumerate(zip(actual, expected, same, strict=True)):
            try:
                assert_within_pytorch_error(a, e, s)
            except AssertionError as error:
                raise AssertionError(f"{sample} output {i}: {error}") from None


FLASH_SHAPES = [  # B, T, H, D, mask
    (1, 7, 3, 64, False),
    (2, 70, 1, 48, True),   # two key tiles, ragged tail, left padding (fully masked query rows)
    (1, 70, 1, 80, True),   # head size padded to 128 (single-buffered K/V), two key tiles
]


def padding_mask(B, T):
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, : T // 3] = False  # left padding: the first queries of row 0 see no key
    if B > 1:
        mask[1, T - 5 :] = False  # right padding
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, H, D, masked", FLASH_SHAPES)
def test_flash_attention(harness, tmp_path, dtype, B, T, H, D, masked):
    qkv = gen(B, T, 3 * H * D, dtype=dtype, seed=8)
    mask = padding_mask(B, T) if masked else None
    save(tmp_path, qkv=qkv, **({"mask": mask} if masked else {}))
    run(harness, tmp_path, "flash_attention", dtype, B, T, H, D, int(masked))
    out = load(tmp_path, "out", dtype, (B, T, H * D))
    def fn(qkv, m):
        return reference.flash_attention(qkv, m, H)
    check_accuracy(out, fn, [qkv, mask], dtype)
    if masked:  # query rows with no key to attend give exact zeros
        assert torch.equal(out[0, : T // 3], torch.zeros_like(out[0, : T // 3]))


DECODE_SHAPES = [  # B, S, H, D, Tmax, lengths, sm_count (few SMs force flash-decoding splits), expected splits
    (3, 1, 2, 64, 300, [0, 150, 299], 4, 2),
    (2, 3, 1, 48, 40, [5, 37], 132, 1),
    (1, 2, 1, 80, 70, [30], 132, 1),  # head size padded to 128
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, S, H, D, Tmax, lengths, sms, splits", DECODE_SHAPES)
def test_decode_attention(harness, tmp_path, dtype, B, S, H, D, Tmax, lengths, sms, splits):
    qkv = gen(B, S, 3 * H * D, dtype=dtype, seed=9)
    k_cache, v_cache = gen(B, H, Tmax, D, dtype=dtype, seed=10), gen(B, H, Tmax, D, dtype=dtype, seed=11)
    lens = torch.tensor(lengths, dtype=torch.int64)
    save(tmp_path, qkv=qkv, k_cache=k_cache, v_cache=v_cache, lengths=lens)
    res = run(harness, tmp_path, "decode_attention", dtype, B, S, H, D, Tmax, sms)
    assert f"splits={splits}" in res.stdout, res.stdout  # the split path really ran where intended
    out = load(tmp_path, "out", dtype, (B, S, H * D))
    k_out = load(tmp_path, "k_cache", dtype, (B, H, Tmax, D))
    v_out = load(tmp_path, "v_cache", dtype, (B, H, Tmax, D))
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.decode_attention(qkv, k_ref, v_ref, lens, H)
    assert torch.equal(k_out, k_ref) and torch.equal(v_out, v_ref)  # new keys/values written, nothing else
    def fn(qkv, k, v):
        return reference.decode_attention(qkv, k.clone(), v.clone(), lens, H)
    check_accuracy(out, fn, [qkv, k_cache, v_cache], dtype)


# cache_lengths no row may use: past the end, negative, near INT64_MAX / INT64_MIN (len + S wraps), and 2^32 + 100,
# which is 100 (in range) once cut to 32 bits: the kernel must decide on the int64 value.
OUT_OF_RANGE = [260, -1, 2**63 - 1, -(2**63), 2**32 + 100, 2**31]


@pytest.mark.parametrize("sms, splits", [(20, 3), (1, 1)])
def test_decode_attention_out_of_range_rows(harness, tmp_path, sms, splits):
    """Rows whose positions fall outside the cache (the binding never looks at the lengths, so that a decode step
    does not wait for the host) leave the whole cache untouched, write nothing outside any buffer (the harness
    checks guard zones around each), and get NaN outputs; the in-range row is unaffected. With and without
    splits."""
    B, S, H, D, Tmax = len(OUT_OF_RANGE) + 1, 1, 2, 64, 260
    dtype = torch.bfloat16
    qkv = gen(B, S, 3 * H * D, dtype=dtype, seed=13)
    k_cache, v_cache = gen(B, H, Tmax, D, dtype=dtype, seed=14), gen(B, H, Tmax, D, dtype=dtype, seed=15)
    lens = torch.tensor([*OUT_OF_RANGE, 100], dtype=torch.int64)
    save(tmp_path, qkv=qkv, k_cache=k_cache, v_cache=v_cache, lengths=lens)
    res = run(harness, tmp_path, "decode_attention", dtype, B, S, H, D, Tmax, sms)
    assert f"splits={splits}" in res.stdout, res.stdout
    out = load(tmp_path, "out", dtype, (B, S, H * D))
    assert torch.isnan(out[:-1]).all()
    k_out, v_out = load(tmp_path, "k_cache", dtype, (B, H, Tmax, D)), load(tmp_path, "v_cache", dtype, (B, H, Tmax, D))
    k_ref, v_ref = k_cache[-1:].clone(), v_cache[-1:].clone()
    def fn(q, k, v):
        return reference.decode_attention(q, k.clone(), v.clone(), lens[-1:], H)
    check_accuracy(out[-1:], fn, [qkv[-1:], k_cache[-1:], v_cache[-1:]], dtype)
    reference.decode_attention(qkv[-1:], k_ref, v_ref, lens[-1:], H)
    assert torch.equal(k_out[:-1], k_cache[:-1]) and torch.equal(v_out[:-1], v_cache[:-1])
    assert torch.equal(k_out[-1:], k_ref) and torch.equal(v_out[-1:], v_ref)


def test_decode_attention_guard_zones_catch_a_stray_write(harness, tmp_path):
    """The guard check itself: a cache declared one position shorter than the data the kernel is told about is
    written past its end for a row at the last position (the harness reads Tmax - 1 positions of cache per row but
    the launch uses Tmax), so the guard after v_cache must report it."""
    B, S, H, D, Tmax = 1, 1, 1, 8, 40  # one row of 8 floats: 32 bytes, within the 64-byte guard zone
    dtype = torch.float32
    qkv = gen(B, S, 3 * H * D, dtype=dtype, seed=16)
    short = gen(B, H, Tmax - 1, D, dtype=dtype, seed=17)
    save(tmp_path, qkv=qkv, k_cache=short, v_cache=short, lengths=torch.tensor([Tmax - 1]))
    res = run(harness, tmp_path, "decode_attention_short_cache", dtype, B, S, H, D, Tmax, 132, check=False)
    assert res.returncode == 4 and "write outside" in res.stderr, res.stdout + res.stderr[-3000:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", range(2))
def test_decode_attention_nonfinite(harness, tmp_path, dtype, index):
    """NaN and inf in queries, cached keys and values (tests/op_samples.py): NaN where PyTorch's math gives NaN,
    finite where it gives weight 0 to a -inf score, whole split-K chunks of -inf included."""
    qkv, k_cache, v_cache, lens, H = sample_inputs("decode_attention", dtype)[-2 + index].args
    assert sample_inputs("decode_attention", dtype)[-2 + index].name.endswith("nonfinite")
    B, S, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    Tmax, D = k_cache.shape[2], k_cache.shape[3]
    save(tmp_path, qkv=qkv, k_cache=k_cache, v_cache=v_cache, lengths=lens)
    res = run(harness, tmp_path, "decode_attention", dtype, B, S, H, D, Tmax, 4)
    assert index == 0 or "splits=1" not in res.stdout, res.stdout  # the long row really is split
    out = load(tmp_path, "out", dtype, (B, S, C))
    def fn(qkv, k, v):
        return reference.decode_attention(qkv, k.clone(), v.clone(), lens, H)
    check_accuracy(out, fn, [qkv, k_cache, v_cache], dtype)
    assert out.isnan().any() and out.isfinite().any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu_nonfinite(harness, tmp_path, dtype):
    """gelu(-inf) = NaN (PyTorch: 0.5 * -inf * (1 + tanh(-inf)) = -inf * 0), gelu(inf) = inf, NaN stays NaN."""
    (sample,) = [s for s in sample_inputs("bias_gelu", dtype) if s.name.endswith("nonfinite")]
    x, bias = sample.args
    save(tmp_path, x=x, bias=bias)
    run(harness, tmp_path, "bias_gelu", dtype, x.numel(), x.shape[-1])
    out = load(tmp_path, "out", dtype, tuple(x.shape))
    check_accuracy(out, reference.bias_gelu, [x, bias], dtype)
    assert out[0, 0].isnan() and out[0, 20] == float("inf")


QUANTIZED_SHAPES = [  # M, K, N, bits, G, bias, residual, gelu
    (1, 32, 17, 8, 0, True, False, False),   # one full block and a 1-column one
    (5, 64, 40, 4, 32, False, True, True),   # a 4-row tile and a 1-row one, three blocks, two groups
    (2, 6, 3, 4, 2, True, True, False),      # groups of 2 k, fewer rows of weights than threads
    (3, 300, 16, 8, 0, False, False, True),  # more k rows than threads: each thread sums several
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, K, N, bits, G, has_bias, has_residual, gelu", QUANTIZED_SHAPES)
def test_linear_quantized(harness, tmp_path, dtype, M, K, N, bits, G, has_bias, has_residual, gelu):
    qweight, scales, zeros = _quantized_weight(M, K, N, bits, G, "cpu")
    packed = reference.pack_quantized_weight(qweight, scales, zeros, bits, G)  # the bytes the kernel reads
    x = gen(M, K, dtype=dtype, seed=20)
    bias = gen(N, dtype=dtype, seed=21) if has_bias else None
    residual = gen(M, N, dtype=dtype, seed=22) if has_residual else None
    save(tmp_path, x=x, packed=packed, **({"bias": bias} if has_bias else {}),
         **({"residual": residual} if has_residual else {}))
    run(harness, tmp_path, "linear_quantized", dtype, M, K, N, bits, G, int(has_bias), int(has_residual), int(gelu))
    args = (x, qweight, scales, zeros, bits, G, bias, residual, gelu, 0)
    assert_within_pytorch_error(load(tmp_path, "out", dtype, (M, N)), quantized_expected(args, dtype),
                                reference.linear_quantized(*args))


def test_layer_catches_a_missing_syncthreads(builds, tmp_path):
    """flash_attention built with the barrier at the top of its key-tile loop removed (GF_DROP_SYNC=1: tile
    landed / previous buffer free): the layer must report the race (ThreadSanitizer) or give a wrong answer."""
    broken = builds["nosync"].result()
    B, T, H, D = 1, 70, 1, 64
    qkv = gen(B, T, 3 * H * D, dtype=torch.bfloat16, seed=12)
    save(tmp_path, qkv=qkv)
    res = run(broken, tmp_path, "flash_attention", torch.bfloat16, B, T, H, D, 0, check=False)
    if res.returncode == 0:
        out = load(tmp_path, "out", torch.bfloat16, (B, T, H * D))
        with pytest.raises(AssertionError):
            check_accuracy(out, lambda q: reference.flash_attention(q, None, H), [qkv], torch.bfloat16)
    else:
        assert "ThreadSanitizer: data race" in res.stderr, res.stderr[-3000:]
