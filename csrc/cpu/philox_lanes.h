// Philox4x32-10 (csrc/philox.h: the contract) on kLanes counters at once, for the attention kernels' dropout
// masks. Written with attention_math.h's vector extensions, so each translation unit compiles it for its lane
// count and target (AVX-512: 16 lanes, AVX2: 8 lanes, portable code). The 32 x 32 -> 64-bit products go through
// 64-bit lanes (vpmuludq on x86).
//
// philox_row_words(seed, n0, count, words): the bits of elements n0 .. n0 + count - 1 of an op's logical tensor
// (consecutive elements: one row of attention probabilities over consecutive keys), word k of them at
// words[n0 % 4 + k]. Bit-identical to philox::element_bits (tests/test_flash_attention_backward.py checks the
// masks against gpt_fast/ops/philox.py).
#pragma once

#include <cstdint>

#include "cpu/attention_math.h"
#include "philox.h"

namespace gpt_fast::attention {
inline namespace GPT_FAST_ATTENTION_NS {

typedef uint64_t VU64 __attribute__((vector_size(8 * GPT_FAST_ATTENTION_LANES)));  // kLanes x uint64

// The four output words of the Philox blocks with counters (c0[l], c1[l], 0, 0), l < kLanes, under key (k0, k1).
GPT_FAST_INLINE void philox_lanes(VU32 c0, VU32 c1, uint32_t k0, uint32_t k1, VU32 out[4]) {
  VU32 c2 = VU32{}, c3 = VU32{};
  for (int round = 0; round < philox::kRounds; ++round) {
    if (round > 0) {
      k0 += philox::kWeyl0;
      k1 += philox::kWeyl1;
    }
    const VU64 p0 = __builtin_convertvector(c0, VU64) * static_cast<uint64_t>(philox::kMul0);
    const VU64 p1 = __builtin_convertvector(c2, VU64) * static_cast<uint64_t>(philox::kMul1);
    const VU32 n0 = __builtin_convertvector(p1 >> 32, VU32) ^ c1 ^ k0;
    const VU32 n2 = __builtin_convertvector(p0 >> 32, VU32) ^ c3 ^ k1;
    c1 = __builtin_convertvector(p1, VU32);
    c3 = __builtin_convertvector(p0, VU32);
    c0 = n0;
    c2 = n2;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// count <= 64 consecutive elements span at most 17 blocks, computed in whole groups of kLanes
constexpr int kMaxRowWords = 4 * ((17 + kLanes - 1) / kLanes * kLanes);

// words[n0 % 4 + k] = philox::element_bits(seed, n0 + k) for k < count (count <= 64); words holds kMaxRowWords.
GPT_FAST_INLINE void philox_row_words(uint64_t seed, uint64_t n0, int count, uint32_t* words) {
  const uint64_t first = n0 >> 2;
  const int blocks = static_cast<int>(((n0 & 3) + count + 3) >> 2);
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  VU32 lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = static_cast<uint32_t>(l);
  for (int g = 0; g < blocks; g += kLanes) {
    const uint64_t start = first + static_cast<uint64_t>(g);
    const uint32_t lo = static_cast<uint32_t>(start), hi = static_cast<uint32_t>(start >> 32);
    const VU32 c0 = lo + lane;
    const VU32 c1 = hi - (VU32)(c0 < lo);  // carry into the high word: a true comparison is all ones (-1)
    VU32 w[4];
    philox_lanes(c0, c1, k0, k1, w);
    for (int l = 0; l < kLanes; ++l)
      for (int k = 0; k < 4; ++k) words[4 * (g + l) + k] = w[k][l];
  }
}

}  // inline namespace GPT_FAST_ATTENTION_NS
}  // namespace gpt_fast::attention
