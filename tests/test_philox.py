"""csrc/philox.h and its PyTorch oracle gpt_fast/ops/philox.py: the published known-answer vectors of
Philox4x32-10 (Random123's kat_vectors), the same bits from C++ and Python for any (seed, element), and the keep
rate of the dropout mask."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from gpt_fast.ops import philox

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

# (counter c0..c3, key k0, k1) -> output words, from Random123's kat_vectors file
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

SEEDS = [0, 1, -1, 0x123456789ABCDEF, -(1 << 63), (1 << 63) - 1]
INDICES = [0, 1, 2, 3, 4, 5, 1023, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 34) + 3, (1 << 62) + 7]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_python_known_answers(counter, key, expected):
    words = philox.philox4x32_10(tuple(torch.tensor([c]) for c in counter), key)
    assert tuple(int(w) for w in words) == expected


CPP = r"""
#include <cinttypes>
#include <cstdio>
#include "philox.h"
using namespace gpt_fast::philox;
int main() {
  const uint32_t kat[3][10] = {
%(kat)s
  };
  for (const auto& v : kat) {
    const Block b = philox4x32_10(v[0], v[1], v[2], v[3], v[4], v[5]);
    for (int i = 0; i < 4; ++i) if (b.w[i] != v[6 + i]) { std::printf("kat mismatch\n"); return 1; }
  }
  const int64_t seeds[] = {%(seeds)s};
  const uint64_t indices[] = {%(indices)s};
  for (int64_t s : seeds)
    for (uint64_t n : indices) std::printf("%%" PRIu32 "\n", element_bits(static_cast<uint64_t>(s), n));
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to compile csrc/philox.h")
def test_cpp_header_matches_python(tmp_path):
    kat = ",\n".join("    {" + ", ".join(f"0x{x:08X}u" for x in (*c, *k, *e)) + "}" for c, k, e in KNOWN_ANSWERS)
    source = CPP % dict(kat=kat, seeds=", ".join(f"INT64_C({s})" if s != -(1 << 63) else "INT64_MIN" for s in SEEDS),
                        indices=", ".join(f"UINT64_C({n})" for n in INDICES))
    (tmp_path / "philox_check.cpp").write_text(source)
    binary = tmp_path / "philox_check"
    subprocess.run(["g++", "-std=c++17", "-O1", "-I", str(ROOT / "csrc"), "-include", "cstdint",
                    str(tmp_path / "philox_check.cpp"), "-o", str(binary)], check=True)
    printed = [int(line) for line in subprocess.run([str(binary)], check=True, capture_output=True,
                                                    text=True).stdout.split()]
    index = torch.tensor(INDICES, dtype=torch.int64)
    expected = [int(b) for s in SEEDS for b in philox.element_bits(s, index)]
    assert printed == expected


KEEP_BITS_CPP = r"""
#include <cstdio>
#include "cpu/dropout_mask.h"
using namespace gpt_fast;
// Every tier's keep bits (dropout_mask.h) against the scalar header, for rows of every n0 % 4 whose Philox block
// counters carry into the high word (2^32 - 5 ...), which no op call reaches.
int main() {
  int bad = 0;
  uint64_t bits[cpu::keep_words(200)];
  for (uint64_t seed : {uint64_t{0}, ~uint64_t{0}, uint64_t{0x123456789ABCDEF}})
    for (uint64_t block : {uint64_t{0}, (uint64_t{1} << 32) - 5, (uint64_t{7} << 32) - 1, (uint64_t{1} << 61) + 3})
      for (uint64_t n0 = 4 * block; n0 < 4 * block + 4; ++n0)
        for (int count : {1, 7, 64, 200}) {
          const cpu::Dropout d{seed, philox::dropout_threshold(0.5), 2.0};
          for (cpu::Isa isa : {cpu::Isa::kScalar, cpu::Isa::kAvx2, cpu::Isa::kAvx512}) {
            if (isa > cpu::cpu_isa()) continue;
            cpu::keep_bits_best(isa, d, n0, count, bits);
            for (int k = 0; k < count; ++k)
              bad += cpu::keep_bit(bits, n0 % 4 + k) != philox::keep(seed, n0 + k, d.threshold);
          }
        }
  std::printf("%d\n", bad);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to compile csrc/cpu/dropout_mask.h")
def test_every_tier_keep_bits_match_the_scalar_header(tmp_path):
    """csrc/cpu/dropout_mask.h, the CPU kernels' one Philox (add_layernorm's and the flash train kernels' dropout),
    gives philox.h's bits on every tier this CPU has, where the block counter carries into its high word too."""
    from torch.utils.cpp_extension import include_paths, library_paths

    (tmp_path / "keep_bits_check.cpp").write_text(KEEP_BITS_CPP)
    binary = tmp_path / "keep_bits_check"
    includes = [f"-I{p}" for p in [str(ROOT / "csrc"), *include_paths()]]
    libraries = [flag for p in library_paths() for flag in (f"-L{p}", f"-Wl,-rpath,{p}")]
    subprocess.run(["g++", "-std=c++20", "-O2", "-Wall", "-Werror", *includes, str(tmp_path / "keep_bits_check.cpp"),
                    *libraries, "-lc10", "-o", str(binary)], check=True)
    assert subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.split() == ["0"]


def test_element_bits_uses_each_word_of_a_block():
    seed = 1234
    words = philox.philox4x32_10(tuple(torch.tensor([c]) for c in (5, 0, 0, 0)), philox.seed_key(seed))
    bits = philox.element_bits(seed, torch.arange(20, 24))
    assert [int(b) for b in bits] == [int(w) for w in words]


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_keep_rate(p):
    n = 1 << 18
    kept = philox.keep_mask(7, (n,), p).double().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) <= 5 * sigma + 1e-12


def test_masks_differ_by_seed_and_are_reproducible():
    a, b = philox.keep_mask(1, (64, 64), 0.5), philox.keep_mask(2, (64, 64), 0.5)
    assert not torch.equal(a, b)
    assert torch.equal(a, philox.keep_mask(1, (64, 64), 0.5))
    torch.manual_seed(3)
    first = philox.draw_seed()
    torch.manual_seed(3)
    assert philox.draw_seed() == first


def test_dropout_scales_kept_values():
    x = torch.randn(32, 48)
    out = philox.dropout(x, 11, 0.25)
    keep = philox.keep_mask(11, x.shape, 0.25)
    torch.testing.assert_close(out[keep], x[keep] / 0.75)
    assert (out[~keep] == 0).all() and (~keep).any()


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_probability(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        philox.dropout_threshold(p)
