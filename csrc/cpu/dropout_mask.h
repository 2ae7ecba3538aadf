// The dropout keep bits of one row for the CPU kernels, drawn under csrc/philox.h's contract: the one Philox code
// of add_layernorm's residual dropout (and its backward) and of the flash-attention train kernels' probabilities.
// The row holds elements [n0, n0 + C) of the op's logical tensor; they go to a bit array where element n0 + c sits
// at bit (n0 % 4) + c (the bits of the Philox block holding n0 start at bit 0, so that each block's four words land
// in four consecutive bits). Scalar: one Philox block per four elements; AVX2: 8 blocks side by side (32 elements a
// step); AVX-512: 16 blocks (64 elements). The 32 x 32 -> 64-bit products of a round come from _mm*_mul_epu32 on the
// even lanes and on the odd lanes shifted down. All paths give the same bits (tests/test_add_layernorm_dropout.py,
// tests/test_flash_attention_backward.py). Measured for a (1024, 768) row block on Zen 5 (one core): AVX-512 0.28 ms,
// AVX2 0.63 ms, scalar 2.4 ms; the vector-extension Philox the attention kernels had before took 0.52, 2.2 and
// 3.1 ms (its 64-bit products became vpmullq on AVX-512 and shift/add chains on AVX2).
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/cpu_isa.h"
#include "cpu/vec.h"
#include "cpu/vec_avx2.h"
#include "philox.h"

namespace gpt_fast::cpu {

// One op call's dropout (p > 0; with p = 0 the kernels take no mask at all).
struct Dropout {
  uint64_t seed;
  uint32_t threshold;  // philox::dropout_threshold(p)
  double scale;        // 1 / (1 - p); the fp32 paths round it once
};

// uint64 words of a row's bit array for C elements: the bits from n0 - n0 % 4 up to the last block, and one spare
// word for the 16/32-bit reads that start near the end (keep_bits).
constexpr int64_t keep_words(int64_t C) { return (C + 6 + 63) / 64 + 1; }

inline void keep_bits_scalar(const Dropout& d, uint64_t n0, int64_t C, uint64_t* bits) {
  const uint64_t first = n0 >> 2, last = (n0 + static_cast<uint64_t>(C) - 1) >> 2;  // Philox blocks of the row
  std::memset(bits, 0, static_cast<size_t>(keep_words(C)) * sizeof(uint64_t));
  const uint32_t k0 = static_cast<uint32_t>(d.seed), k1 = static_cast<uint32_t>(d.seed >> 32);
  for (uint64_t b = first; b <= last; ++b) {
    const philox::Block w =
        philox::philox4x32_10(static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), 0u, 0u, k0, k1);
    const uint64_t pos = (b - first) * 4;
    for (int j = 0; j < 4; ++j) {
      if (w.w[j] >= d.threshold) bits[(pos + j) >> 6] |= uint64_t{1} << ((pos + j) & 63);
    }
  }
}

// count (<= 32) bits of the array from bit pos on, as the low bits of the result.
inline uint32_t keep_bits(const uint64_t* bits, int64_t pos, int count) {
  const int64_t i = pos >> 6;
  const int s = static_cast<int>(pos & 63);
  uint64_t v = bits[i] >> s;
  if (s > 64 - count) v |= bits[i + 1] << (64 - s);
  return static_cast<uint32_t>(v & ((uint64_t{1} << count) - 1));
}

inline bool keep_bit(const uint64_t* bits, int64_t pos) { return (bits[pos >> 6] >> (pos & 63)) & 1; }

// Bit i of k (i < 16) moved to bit 4 i.
inline uint64_t spread4(uint64_t k) {
  k = (k | (k << 24)) & 0x000000FF000000FFull;
  k = (k | (k << 12)) & 0x000F000F000F000Full;
  k = (k | (k << 6)) & 0x0303030303030303ull;
  return (k | (k << 3)) & 0x1111111111111111ull;
}

#if GPT_FAST_HAVE_X86
// The high and low 32 bits of the lane-wise products a * m (m: the multiplier in every 32-bit lane).
GPT_FAST_AVX512 inline void mul_hi_lo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

GPT_FAST_AVX512 inline void keep_bits_avx512(const Dropout& d, uint64_t n0, int64_t C, uint64_t* bits) {
  const uint64_t first = n0 >> 2, blocks = ((n0 + static_cast<uint64_t>(C) - 1) >> 2) - first + 1;
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kMul0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(philox::kMul1));
  const __m512i thr = _mm512_set1_epi32(static_cast<int>(d.threshold));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (uint64_t s = 0; s < blocks; s += 16) {
    const uint64_t b = first + s;
    const __m512i lo_b = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b)));
    __m512i c0 = _mm512_add_epi32(lo_b, iota);  // low words of b + i; a carry into the high word where they wrap
    __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b >> 32))),
                                       _mm512_cmplt_epu32_mask(c0, lo_b),
                                       _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b >> 32))),
                                       _mm512_set1_epi32(1));
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = static_cast<uint32_t>(d.seed), k1 = static_cast<uint32_t>(d.seed >> 32);
    for (int round = 0; round < philox::kRounds; ++round) {
      if (round > 0) k0 += philox::kWeyl0, k1 += philox::kWeyl1;
      __m512i hi0, lo0, hi1, lo1;
      mul_hi_lo16(c0, m0, hi0, lo0);
      mul_hi_lo16(c2, m1, hi1, lo1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
    }
    bits[s / 16] = spread4(_mm512_cmpge_epu32_mask(c0, thr)) | spread4(_mm512_cmpge_epu32_mask(c1, thr)) << 1 |
                   spread4(_mm512_cmpge_epu32_mask(c2, thr)) << 2 | spread4(_mm512_cmpge_epu32_mask(c3, thr)) << 3;
  }
}

GPT_FAST_AVX2 inline void mul_hi_lo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// 8 bits: lane i of x >= thr (unsigned).
GPT_FAST_AVX2 inline uint64_t keep8(__m256i x, __m256i thr) {
  const __m256i ge = _mm256_cmpeq_epi32(_mm256_max_epu32(x, thr), x);
  return static_cast<uint64_t>(_mm256_movemask_ps(_mm256_castsi256_ps(ge)));
}

GPT_FAST_AVX2 inline void keep_bits_avx2(const Dropout& d, uint64_t n0, int64_t C, uint64_t* bits) {
  const uint64_t first = n0 >> 2, blocks = ((n0 + static_cast<uint64_t>(C) - 1) >> 2) - first + 1;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox::kMul0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox::kMul1));
  const __m256i thr = _mm256_set1_epi32(static_cast<int>(d.threshold));
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (uint64_t s = 0; s < blocks; s += 8) {
    const uint64_t b = first + s;
    const __m256i lo_b = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b)));
    __m256i c0 = _mm256_add_epi32(lo_b, iota);
    // wrapped low words (c0 < b's, unsigned) carry 1 into the high word: subtract the all-ones compare result
    const __m256i sign = _mm256_set1_epi32(INT32_MIN);
    const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(lo_b, sign), _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b >> 32))), wrapped);
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = static_cast<uint32_t>(d.seed), k1 = static_cast<uint32_t>(d.seed >> 32);
    for (int round = 0; round < philox::kRounds; ++round) {
      if (round > 0) k0 += philox::kWeyl0, k1 += philox::kWeyl1;
      __m256i hi0, lo0, hi1, lo1;
      mul_hi_lo8(c0, m0, hi0, lo0);
      mul_hi_lo8(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
    }
    const uint64_t word = spread4(keep8(c0, thr)) | spread4(keep8(c1, thr)) << 1 | spread4(keep8(c2, thr)) << 2 |
                          spread4(keep8(c3, thr)) << 3;  // 32 bits
    const uint32_t half = static_cast<uint32_t>(word);
    std::memcpy(reinterpret_cast<char*>(bits) + s / 2, &half, sizeof(half));  // bits [4 s, 4 s + 32), little-endian
  }
}

// d * scale where bit i of k8 is set, else 0 (also for a non-finite d, as the oracle's torch.where).
GPT_FAST_AVX2 inline __m256 apply_keep8(__m256 d, uint32_t k8, __m256 scale) {
  const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i kept = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(k8)), lanes), lanes);
  return _mm256_and_ps(_mm256_castsi256_ps(kept), _mm256_mul_ps(d, scale));
}
#endif

// The row's keep bits on the best path isa allows: for code compiled once for several tiers (the flash kernels' 16-lane
// copy runs as AVX-512 and as portable code), which cannot name the intrinsics itself.
inline void keep_bits_best(Isa isa, const Dropout& d, uint64_t n0, int64_t C, uint64_t* bits) {
#if GPT_FAST_HAVE_X86
  if (isa >= Isa::kAvx512) return keep_bits_avx512(d, n0, C, bits);
  if (isa >= Isa::kAvx2) return keep_bits_avx2(d, n0, C, bits);
#endif
  keep_bits_scalar(d, n0, C, bits);
}

}  // namespace gpt_fast::cpu
