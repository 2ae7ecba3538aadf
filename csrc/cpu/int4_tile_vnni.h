// The int4 tile of gpt_fast::linear_quantized for x rounded to int8 (x_bits 8) on AVX512_VNNI + AVX512_VBMI, called
// by the AVX-512 tier's walk (linear_quantized_avx512.cpp; interface: linear_quantized.h; layout: quantized_layout.h;
// the rounding of x: linear_quantized.cpp, to reference.round_activations' bits).
//
// The weight-only tiles spend two shuffles (vpmultishiftqb + vpermw, both on one port) per 16 weight bytes to make
// bf16 pairs; one vpdpbusd multiplies 4 k of 16 columns as bytes (q in [0, 15] unsigned times x's int8, summed into
// int32), so one vpermb + one vpmultishiftqb + one vpand serve 32 weight bytes:
//   vpermb     32 bytes (rows p and p + 1 of the group: k = 2p .. 2p + 3 of the 16 columns, two nibbles a byte) ->
//              qword Q = (b[p, 2Q], b[p + 1, 2Q], b[p, 2Q + 1], b[p + 1, 2Q + 1], 4 unused bytes)
//   vpmultishiftqb  each byte of lane L = 2Q + e the 8 bits at offset 16 e + 4 i of its qword (i = 0..3: the low
//              nibble of row p's byte, its high nibble, then row p + 1's), vpand 0x0F: lane L = column L's q for
//              k = 2p, 2p + 1, 2p + 2, 2p + 3 in the order of x's 4 bytes, columns in their natural order
//   vpdpbusd   per row, with x's 4 int8 of those k broadcast.
// Exact in int32 per group (|sum| <= 15 * 127 * G + 8 * 127 * G: the walk takes this tile for G <= kMaxVnniGroup);
// the sum starts at -8 sum_g xq so that it is sum (q - 8) xq, the centring of the weight-only tiles, and the group
// adds scale * xscale * sum + (zero + 8 scale) * xsum in fp32 (xsum: sum of the rounded x, as the other tiers).
// Each stream is prefetched 8 KiB ahead, except at 1-4 rows on AMD Zen 4 (vnni_hardware_prefetch_only).
#pragma once
#include <cstring>

#include "cpu/linear_quantized.h"
#include "cpu/vec.h"  // GPT_FAST_HAVE_X86, finish_columns16, bf16_bits_to_fp32

namespace gpt_fast::quantized {
constexpr int64_t kMaxVnniGroup = 1 << 16;  // G bound for int32 group sums (see above)
}  // namespace gpt_fast::quantized

#if GPT_FAST_HAVE_X86
#define GPT_FAST_AVX512_VNNI_VBMI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,fma,f16c")))

namespace gpt_fast::quantized {

namespace vnni {
// acc + the 4 byte products of a (unsigned) and b (signed) per int32 lane: _mm512_dpbusd_epi32 written in place.
// GCC 12 treats the intrinsic's accumulator as a separate input and, with 16 of them live, copies each one between
// registers around every vpdpbusd; the asm ties it to its output register.
GPT_FAST_AVX512_VNNI_VBMI inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
#if defined(__GNUC__) && !defined(__clang__)
  asm("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, a, b);
#endif
}

// vpermb indices: qword Q takes bytes 2Q and 16 + 2Q (column 2Q of rows p, p + 1) then 2Q + 1 and 17 + 2Q.
alignas(64) inline constexpr uint8_t kPairRows[64] = {
    0,  16, 1,  17, 0, 0, 0, 0, 2,  18, 3,  19, 0, 0, 0, 0, 4,  20, 5,  21, 0, 0, 0, 0,
    6,  22, 7,  23, 0, 0, 0, 0, 8,  24, 9,  25, 0, 0, 0, 0, 10, 26, 11, 27, 0, 0, 0, 0,
    12, 28, 13, 29, 0, 0, 0, 0, 14, 30, 15, 31, 0, 0, 0, 0};
// vpmultishiftqb bit offsets, the same for every qword: lane 2Q from bytes 0 and 1, lane 2Q + 1 from bytes 2 and 3.
alignas(64) inline constexpr uint8_t kNibbleOffsets[64] = {
    0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28,
    0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28};
}  // namespace vnni

// MR rows x NB blocks (MR x NB <= 8), G % 4 == 0; a.xq, a.xscale, a.xqsum and a.xsum set.
template <typename T, int MR, int NB>
GPT_FAST_AVX512_VNNI_VBMI void int4_tile_vnni(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  const int64_t K = a.K, G = a.G, groups = K / G, group_bytes = quant::group_bytes4(G);
  const int64_t ahead = MR <= 4 && vnni_hardware_prefetch_only() ? 0 : kPrefetchFar;  // 0: no software prefetch
  const uint8_t* wbs[NB];  // (K / G, 8 G + 64) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const int8_t* xq = a.xq + m0 * K;             // (MR, K)
  const float* xscale = a.xscale + m0 * groups;  // (MR, K / G)
  const int32_t* xqsum = a.xqsum + m0 * groups;  // (MR, K / G)
  const float* xsum = a.xsum + m0 * groups;      // (MR, K / G)
  const __m512i pair_rows = _mm512_load_si512(vnni::kPairRows), offsets = _mm512_load_si512(vnni::kNibbleOffsets);
  const __m512i low_nibble = _mm512_set1_epi8(0x0F);
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[NB][MR];  // int32 sums of (q - 8) xq over the group
    for (int m = 0; m < MR; ++m) {
      const __m512i start = _mm512_set1_epi32(-8 * xqsum[m * groups + g]);
      for (int j = 0; j < NB; ++j) acc[j][m] = start;
    }
    const int8_t* xg = xq + g * G;
    for (int j = 0; j < NB && ahead; ++j)  // the group's tail (scales, zeros): the line the row prefetches skip
      _mm_prefetch(reinterpret_cast<const char*>(wbs[j] + g * group_bytes + 8 * G) + ahead, _MM_HINT_T0);
    for (int64_t p = 0; p < G / 2; p += 2) {  // rows p and p + 1: k = 2p .. 2p + 3
      int32_t x4[MR];
      for (int m = 0; m < MR; ++m) std::memcpy(&x4[m], xg + m * K + 2 * p, 4);
      for (int j = 0; j < NB; ++j) {
        const uint8_t* rows = wbs[j] + g * group_bytes + p * kBN;
        if (ahead && p % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(rows) + ahead, _MM_HINT_T0);
        const __m512i bytes = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows)));
        const __m512i q = _mm512_and_si512(
            _mm512_multishift_epi64_epi8(offsets, _mm512_permutexvar_epi8(pair_rows, bytes)), low_nibble);
        for (int m = 0; m < MR; ++m) acc[j][m] = vnni::dpbusd(acc[j][m], q, _mm512_set1_epi32(x4[m]));
      }
    }
    for (int j = 0; j < NB; ++j) {
      const uint8_t* tail = wbs[j] + g * group_bytes + 8 * G;  // 16 bf16 scales, 16 bf16 zeros
      const __m512 scale = cpu::bf16_bits_to_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tail)));
      const __m512 zero = cpu::bf16_bits_to_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tail + 2 * kBN)));
      const __m512 centred_zero = _mm512_fmadd_ps(_mm512_set1_ps(8.f), scale, zero);  // zero + 8 scale
      for (int m = 0; m < MR; ++m) {
        const __m512 row_scale = _mm512_mul_ps(scale, _mm512_set1_ps(xscale[m * groups + g]));
        total[j][m] = _mm512_fmadd_ps(row_scale, _mm512_cvtepi32_ps(acc[j][m]), total[j][m]);
        total[j][m] = _mm512_fmadd_ps(centred_zero, _mm512_set1_ps(xsum[m * groups + g]), total[j][m]);
      }
    }
  }
  for (int j = 0; j < NB; ++j) cpu::finish_columns16<T>(a, total[j], MR, m0, blocks[j] * kBN);
}

}  // namespace gpt_fast::quantized
#endif  // GPT_FAST_HAVE_X86
