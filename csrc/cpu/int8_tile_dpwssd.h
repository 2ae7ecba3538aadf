// The int8 tile of gpt_fast::linear_quantized for weight-only int8 (bits 8, x_bits 0) with a bf16 x from 5 rows on,
// on AVX512_VNNI (+ VBMI), called by the AVX-512 tier's walk (linear_quantized_avx512.cpp; interface:
// linear_quantized.h; layout: quantized_layout.h).
//
// int8_tile_dpbf16 converts every weight to bf16 (2 vpmovsxbd, 2 vcvtdq2ps, a shift and a vpternlogd per 32
// weights) and multiplies it with vdpbf16ps; from ~5 rows those conversions, on the same pipes as the products,
// bound the tile. Here x is held as 16-bit integers instead and the weights only widen to int16:
//   vpermb      64 bytes (rows k .. k + 3 of the block, 16 columns each) -> the low 32 bytes interleave rows k and
//               k + 1 (column j's two bytes side by side), the high 32 rows k + 2 and k + 3
//   vpmovsxbw   each half -> 16 int32 lanes of two int16 weights (k, k + 1) or (k + 2, k + 3)
//   vpdpwssd    per row, with x's two int16 of those k broadcast (2 k of 16 columns an instruction, as vdpbf16ps).
// x16 (round_x16_groups): each group of kX16Group k of a row is x / s with s = 2^(e - 14), e the exponent of the
// group's largest |x|, rounded to nearest even: every bf16 x within 2^7 of the group's largest (|x| >= max / 128)
// is exact in it (its 8 significant bits sit at or above bit 0), smaller ones are rounded to a multiple of s, an
// error of at most 2^-15 of the group's largest, far below the bf16 rounding of the output. |x16| <= 255 * 2^7 and
// |q| <= 128, so a group's int32 sum is at most 32 * 32640 * 128 < 2^28 (exact); the group adds s * sum in fp32 and
// the row's total is times the column scales at the end. A group holding an infinity or NaN is not rounded: the op
// keeps the tile it takes otherwise (vdpbf16ps, or the fp32 FMAs without AVX512_BF16) for that call.
#pragma once
#include <algorithm>
#include <cstring>

#include "cpu/int4_tile_vnni.h"  // GPT_FAST_AVX512_VNNI_VBMI
#include "cpu/int8_tile_vnni.h"  // add_group_sums, finish_int8_blocks
#include "cpu/linear_quantized.h"
#include "cpu/vec.h"  // GPT_FAST_HAVE_X86, finish_columns16

namespace gpt_fast::quantized {
constexpr int64_t kX16Group = 32;  // k per x16 scale (K % kX16Group == 0 for this tile)
constexpr int64_t kX16MinRows = 5;  // 1-4 rows are memory-bound: no faster so there (linear_quantized.cpp)
}  // namespace gpt_fast::quantized

#if GPT_FAST_HAVE_X86
namespace gpt_fast::quantized {

namespace vnni {
// vpermb indices: bytes 2j, 2j + 1 = bytes j, 16 + j (column j of rows k, k + 1); bytes 32 + 2j, 33 + 2j = bytes
// 32 + j, 48 + j (rows k + 2, k + 3).
alignas(64) inline constexpr uint8_t kInterleaveRowPairs[64] = {
    0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
    11, 27, 12, 28, 13, 29, 14, 30, 15, 31, 32, 48, 33, 49, 34, 50, 35, 51, 36, 52, 37, 53,
    38, 54, 39, 55, 40, 56, 41, 57, 42, 58, 43, 59, 44, 60, 45, 61, 46, 62, 47, 63};

// acc + the 2 int16 products of a and b per int32 lane: _mm512_dpwssd_epi32 in place (see dpbusd).
GPT_FAST_AVX512_VNNI_VBMI inline __m512i dpwssd(__m512i acc, __m512i a, __m512i b) {
#if defined(__GNUC__) && !defined(__clang__)
  asm("vpdpwssd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
  return acc;
#else
  return _mm512_dpwssd_epi32(acc, a, b);
#endif
}
}  // namespace vnni

// Groups [0, groups) of kX16Group values of x (fp32 holding bf16 values) -> x16 and scale (above). Returns false,
// leaving the rest unwritten, at the first group holding an infinity or NaN.
GPT_FAST_AVX512_VNNI_VBMI inline bool round_x16_groups(const float* x, int16_t* x16, float* scale, int64_t groups) {
  static_assert(kX16Group == 32, "two 16-lane halves per group");
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 lo = _mm512_loadu_ps(x + g * 32), hi = _mm512_loadu_ps(x + g * 32 + 16);
    const __m512i bits = _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(lo), magnitude),
                                          _mm512_and_si512(_mm512_castps_si512(hi), magnitude));
    const uint32_t largest = _mm512_reduce_max_epu32(bits);
    const uint32_t e = std::max(largest >> 23, 14u);  // biased exponent, >= 14 so that 1 / s is a normal float
    if (e == 255) return false;
    // s = 2^(e - 141) (biased exponent e - 14; 2^-127 below normal floats when e = 14), 1 / s = 2^(141 - e)
    const uint32_t scale_bits = e > 14 ? (e - 14) << 23 : 0x00400000u, inverse_bits = (268 - e) << 23;
    const __m512 inverse = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(inverse_bits)));
    std::memcpy(&scale[g], &scale_bits, 4);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x16 + g * 32),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inverse))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x16 + g * 32 + 16),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inverse))));
  }
  return true;
}

// MR rows x NB blocks (MR x NB <= 16); a.x16 and a.x16scale set (K % kX16Group == 0).
template <typename T, int MR, int NB>
GPT_FAST_AVX512_VNNI_VBMI void int8_tile_dpwssd(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  const int64_t K = a.K, groups = K / kX16Group;
  const uint8_t* wbs[NB];  // (K, 16) bytes each, then the 16 fp32 column scales
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const int16_t* x16 = a.x16 + m0 * K;            // (MR, K)
  const float* xscale = a.x16scale + m0 * groups;  // (MR, K / kX16Group)
  const __m512i interleave = _mm512_load_si512(vnni::kInterleaveRowPairs);
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[NB][MR];  // int32 sums of q x16 over the group
    for (int j = 0; j < NB; ++j)
      for (int m = 0; m < MR; ++m) acc[j][m] = _mm512_setzero_si512();
    for (int64_t k = g * kX16Group; k < (g + 1) * kX16Group; k += 4) {  // one 64-byte line per stream
      __m512i w01[NB], w23[NB];
      for (int j = 0; j < NB; ++j) {
        const uint8_t* rows = wbs[j] + k * kBN;
        cpu::prefetch_line(rows + kPrefetchFar, false);
        const __m512i pairs = _mm512_permutexvar_epi8(interleave, _mm512_loadu_si512(rows));
        w01[j] = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(pairs));
        w23[j] = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(pairs, 1));
      }
      for (int m = 0; m < MR; ++m) {  // x's k pairs broadcast once per row for all blocks
        int32_t x01, x23;
        std::memcpy(&x01, x16 + m * K + k, 4), std::memcpy(&x23, x16 + m * K + k + 2, 4);
        const __m512i b01 = _mm512_set1_epi32(x01), b23 = _mm512_set1_epi32(x23);
        for (int j = 0; j < NB; ++j) acc[j][m] = vnni::dpwssd(vnni::dpwssd(acc[j][m], w01[j], b01), w23[j], b23);
      }
    }
    add_group_sums<MR, NB>(total, acc, xscale + g, groups);
  }
  finish_int8_blocks<T, MR, NB>(a, wbs, total, blocks, m0);
}

}  // namespace gpt_fast::quantized
#endif  // GPT_FAST_HAVE_X86
