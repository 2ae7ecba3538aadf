// The int8 tile of gpt_fast::linear_quantized for x rounded to int8 per group of G k (x_bits 8 with bits 8, the
// int8-a8 scheme) on AVX512_VNNI + AVX512_VBMI, called by the AVX-512 tier's walk (linear_quantized_avx512.cpp;
// interface: linear_quantized.h; layout: quantized_layout.h; the rounding of x: linear_quantized.cpp, to
// reference.round_activations' bits).
//
// The weight-only int8 tiles convert every weight to fp32 or bf16 and multiply it once per row (int8_tile: a sign
// extension, a convert and an FMA per 16 weights; int8_tile_dpbf16: vdpbf16ps, 2 k an instruction). Here one
// vpdpbusd multiplies 4 k of 16 columns as bytes into int32, and one vpermb + one vpxor serve 64 weight bytes for
// every row:
//   vpermb     64 bytes (rows k .. k + 3 of the block, 16 columns each) -> lane j = column j's 4 weights in k order
//   vpxor 0x80 q + 128 as unsigned bytes (vpdpbusd multiplies unsigned bytes by signed ones)
//   vpdpbusd   per row, with x's 4 int8 of those k broadcast.
// sum (q + 128) xq = sum q xq + 128 sum xq, so each group's sums start at -128 times the group's sum of xq (the
// rounding makes those sums) and end as sum q xq, exact in int32 (|.| <= 255 * 127 * G + 128 * 127 * G, G <=
// kMaxVnniGroup); the group adds xscale * sum in fp32, and the row's total is times the column scales at the end.
// Software prefetch 8 KiB ahead, except at 1-4 rows on AMD Zen 4 (vnni_hardware_prefetch_only; the walk then reads 2
// streams at 1-2 rows), as int4_tile_vnni; at 5+ rows into L2 only on Zen 4 (vnni_int8_prefetch_to_l2). The sums
// are added in place (vnni::dpbusd): 1.16x the speed at 8 rows in L2 (GCC 12 copied them around each vpdpbusd).
#pragma once
#include <cstring>

#include "cpu/int4_tile_vnni.h"  // GPT_FAST_AVX512_VNNI_VBMI, kMaxVnniGroup
#include "cpu/linear_quantized.h"
#include "cpu/vec.h"  // GPT_FAST_HAVE_X86, finish_columns16

#if GPT_FAST_HAVE_X86
namespace gpt_fast::quantized {

namespace vnni {
// vpermb indices: byte 4 j + r of the result = byte 16 r + j of the 4 rows (column j, k + r).
alignas(64) inline constexpr uint8_t kColumnsOf4Rows[64] = {
    0,  16, 32, 48, 1,  17, 33, 49, 2,  18, 34, 50, 3,  19, 35, 51, 4,  20, 36, 52, 5,  21, 37, 53,
    6,  22, 38, 54, 7,  23, 39, 55, 8,  24, 40, 56, 9,  25, 41, 57, 10, 26, 42, 58, 11, 27, 43, 59,
    12, 28, 44, 60, 13, 29, 45, 61, 14, 30, 46, 62, 15, 31, 47, 63};
}  // namespace vnni

// total[j][m] += float(acc[j][m]) * xscale[m * groups]: one group's int32 sums into the rows' fp32 totals (the
// int8 tiles with integer x: int8_tile_vnni, int8_tile_dpwssd.h).
template <int MR, int NB>
GPT_FAST_AVX512_VNNI_VBMI inline void add_group_sums(__m512 (&total)[NB][MR], const __m512i (&acc)[NB][MR],
                                                     const float* xscale, int64_t groups) {
  for (int m = 0; m < MR; ++m) {
    const __m512 row_scale = _mm512_set1_ps(xscale[m * groups]);
    for (int j = 0; j < NB; ++j) total[j][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j][m]), row_scale, total[j][m]);
  }
}

// The totals times each block's 16 fp32 column scales (after its K x 16 weight bytes), then the epilogue.
template <typename T, int MR, int NB>
GPT_FAST_AVX512_VNNI_VBMI inline void finish_int8_blocks(const QuantArgs<T>& a, const uint8_t* const (&wbs)[NB],
                                                         __m512 (&total)[NB][MR], const int64_t* blocks, int64_t m0) {
  for (int j = 0; j < NB; ++j) {
    const __m512 scale = _mm512_loadu_ps(wbs[j] + a.K * kBN);
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_mul_ps(total[j][m], scale);
    cpu::finish_columns16<T>(a, total[j], MR, m0, blocks[j] * kBN);
  }
}

// MR rows x NB blocks (MR x NB <= 8), G % 4 == 0, G <= kMaxVnniGroup; a.xq, a.xscale and a.xqsum set (groups of G).
template <typename T, int MR, int NB>
GPT_FAST_AVX512_VNNI_VBMI void int8_tile_vnni(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  const int64_t K = a.K, G = a.G, groups = K / G;
  const int64_t ahead = MR <= 4 && vnni_hardware_prefetch_only() ? 0 : kPrefetchFar;  // 0: no software prefetch
  const bool to_l2 = vnni_int8_prefetch_to_l2();
  const uint8_t* wbs[NB];  // (K + 4, 16) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const int8_t* xq = a.xq + m0 * K;             // (MR, K)
  const float* xscale = a.xscale + m0 * groups;  // (MR, K / G)
  const int32_t* xqsum = a.xqsum + m0 * groups;  // (MR, K / G)
  const __m512i columns = _mm512_load_si512(vnni::kColumnsOf4Rows), offset = _mm512_set1_epi8(-128);
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[NB][MR];  // int32 sums of (q + 128) xq over the group, from -128 sum xq
    for (int m = 0; m < MR; ++m) {
      const __m512i start = _mm512_set1_epi32(-128 * xqsum[m * groups + g]);
      for (int j = 0; j < NB; ++j) acc[j][m] = start;
    }
    for (int64_t k = g * G; k < (g + 1) * G; k += 4) {  // one 64-byte line per stream
      __m512i w[NB];
      for (int j = 0; j < NB; ++j) {
        const uint8_t* rows = wbs[j] + k * kBN;
        if (ahead) cpu::prefetch_line(rows + ahead, to_l2);
        w[j] = _mm512_xor_si512(_mm512_permutexvar_epi8(columns, _mm512_loadu_si512(rows)), offset);
      }
      for (int m = 0; m < MR; ++m) {  // x's 4 bytes broadcast once per row for all blocks (few live registers)
        int32_t x4;
        std::memcpy(&x4, xq + m * K + k, 4);
        const __m512i xb = _mm512_set1_epi32(x4);
        for (int j = 0; j < NB; ++j) acc[j][m] = vnni::dpbusd(acc[j][m], w[j], xb);
      }
    }
    add_group_sums<MR, NB>(total, acc, xscale + g, groups);
  }
  finish_int8_blocks<T, MR, NB>(a, wbs, total, blocks, m0);
}

}  // namespace gpt_fast::quantized
#endif  // GPT_FAST_HAVE_X86
