// The AVX-512 (and AVX512_BF16) tier of gpt_fast::linear_quantized (interface: linear_quantized.h; checks, x
// preparation, the scalar path: linear_quantized.cpp; layout: quantized_layout.h).
//
// A tile is MR rows x NB 16-column blocks whose byte streams are read side by side (one from each equal part of the
// task's range, over_block_groups as linear_small_m), each block once per row tile, with a software prefetch
// near_prefetch (3+ rows: 8 KiB) ahead in each stream. One 16-lane vector holds one k of a block's 16 columns:
//   bits 8: 16 bytes -> vpmovsxbd -> vcvtdq2ps -> one FMA per row with the broadcast x[m, k]; sums folded every 64 k
//           into a running total, times the 16 fp32 scales once at the end.
//   bits 4: 16 bytes = one k pair -> vpmovzxbd; the low nibbles (k = 2p) and the high ones (k = 2p + 1) each ->
//           q - 8 in fp32 by one vpermps from a 16-entry table (no mask, no convert) -> one FMA per row; every 32
//           pairs total += scale * sum, per group total += (zero + 8 scale) * xsum[m, g] (linear_quantized.cpp).
//   bits 4 / bits 8 with x rounded to int8 (x_bits 8) on AVX512_VNNI + VBMI: int4_tile_vnni.h / int8_tile_vnni.h
//   (vpdpbusd, 4 k an instruction); int8_tile_vnni at 5-8 rows takes 2 blocks, as int8_tile_dpbf16.
//   With a bf16 x and AVX512_BF16 (int8_tile_dpbf16; int4_tile_dpbf16, which also needs VBMI): the weights of two
//   k are made into 16 bf16 pairs (int8: two converts, a shift and a vpternlogd; int4: vpmultishiftqb + vpermw of
//   q - 8, lanes in a permuted column order) and one vdpbf16ps per row multiplies 2 k: half the multiply-adds at
//   8-16 rows, where they bound the tier, and fewer instructions per weight byte at 1 row for int4. int8 at one
//   row takes int8_tile instead (linear_quantized.cpp passes no x pairs): 6 vector instructions per 32 weights
//   against 7, and on Zen 5 ~18% more weights per second in cache (1 thread). int8 with a bf16 x from 5 rows on
//   AVX512_VNNI: int8_tile_dpwssd.h (x as 16-bit integers, weights widened to int16, vpdpwssd: 2 k an instruction
//   without the bf16 conversion), 2 blocks at 5-8 rows as well.
// Registers (32 zmm): up to 8 rows, MR x NB <= 8 sums (x 2 chains: the vdpbf16ps paths, and the fp32 ones with
// MR x NB <= 4) + as many totals; int8_tile_dpbf16 at 5-8 rows: 2 blocks, MR x NB <= 16 sums in 1 chain each.
#include <algorithm>
#include <type_traits>

#include "cpu/amx_linear.h"
#include "cpu/int4_tile_vnni.h"
#include "cpu/int8_tile_dpwssd.h"
#include "cpu/int8_tile_vnni.h"
#include "cpu/linear_quantized.h"
#include "cpu/vec.h"  // GPT_FAST_HAVE_X86, GPT_FAST_AVX512, Vec16, gelu_tanh_fp32, first_lanes

#if GPT_FAST_HAVE_X86
#define GPT_FAST_AVX512_BF16_VBMI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,fma,f16c")))

namespace gpt_fast::quantized {
namespace {

constexpr int kPairsPerSum = 32;  // int4: k pairs summed before folding into the group sum

template <typename T, int MR, int NB>
GPT_FAST_AVX512 void int8_tile(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  constexpr int CH = MR * NB <= 4 ? 2 : 1;  // chains per row and block: alternate k apart when few rows
  const int64_t K = a.K;
  const uint8_t* wbs[NB];  // (K + 4, 16) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const float* x = a.x + m0 * K;  // (MR, K)
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t k1 = std::min(K, k0 + kChunkK);
    __m512 acc[NB][CH][MR];
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_setzero_ps();
    auto k_step = [&](int j, int c, int64_t k) GPT_FAST_AVX512 {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wbs[j] + k * kBN));
      const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
      for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[m * K + k]), acc[j][c][m]);
    };
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {  // 4 k = one 64-byte line per stream
      for (int j = 0; j < NB; ++j) prefetch_stream<MR>(wbs[j] + k * kBN);
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < NB; ++j) k_step(j, i % CH, k + i);
    }
    for (; k < k1; ++k)
      for (int j = 0; j < NB; ++j) k_step(j, 0, k);
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) total[j][m] = _mm512_add_ps(total[j][m], acc[j][c][m]);
  }
  for (int j = 0; j < NB; ++j) {
    const __m512 scale = _mm512_loadu_ps(wbs[j] + K * kBN);
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_mul_ps(total[j][m], scale);
    cpu::finish_columns16<T>(a, total[j], MR, m0, blocks[j] * kBN);
  }
}

// The 16 bf16 pairs (q[2s, j], q[2s + 1, j]) of int8 weight rows 2s (at rows) and 2s + 1 (rows + 16), exact: each
// row converted to fp32, whose high halves are the exact bf16 values (|q| <= 127 needs 7 bits), then merged as
// (f1 & 0xFFFF0000) | (f0 >> 16) by one vpternlogd (0xCA = high ? f1 : (f0 >> 16), bit by bit).
GPT_FAST_AVX512 inline __m512i int8_rows_to_bf16_pairs(const uint8_t* rows) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512i f0 = _mm512_castps_si512(
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows)))));
  const __m512i f1 = _mm512_castps_si512(
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + kBN)))));
  return _mm512_ternarylogic_epi32(high, f1, _mm512_srli_epi32(f0, 16), 0xCA);
}

// bits 8 with a bf16 x (even K) on AVX512_BF16: rows k = 2s and 2s + 1 converted to fp32, whose high halves are
// their exact bf16 values (|q| <= 127 needs 7 bits), merged into the bf16 pairs (q[2s, j], q[2s + 1, j]) by a
// shift and a vpternlogd, then one vdpbf16ps per row with x's pair: half the multiply-adds of int8_tile. At 5-8
// rows the tile takes 2 blocks (quantized_blocks_avx512): every x pair broadcast (a load, at most 2 a cycle on Zen 5,
// one per row and pair) then serves 2 blocks, ~5-20% more weights per second at 5-8 rows (1 thread, in cache).
template <typename T, int MR, int NB>
GPT_FAST_AVX512_BF16 void int8_tile_dpbf16(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  // chains per row and block (alternate k pairs): 8 rows x 1 block alone would wait on latency; 16 sums need none
  constexpr int CH = MR * NB <= 8 ? 2 : 1;
  const int64_t K = a.K, pairs = K / 2;
  const uint8_t* wbs[NB];  // (K + 4, 16) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const uint32_t* xp = a.x_pairs + m0 * pairs;  // (MR, K / 2)
  auto pair_step = [&](__m512* acc, const uint8_t* rows, int64_t s) GPT_FAST_AVX512_BF16 {
    const __m512bh w = (__m512bh)int8_rows_to_bf16_pairs(rows);
    for (int m = 0; m < MR; ++m)
      acc[m] = _mm512_dpbf16_ps(acc[m], w, (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[m * pairs + s])));
  };
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t s0 = 0; s0 < pairs; s0 += kChunkK / 2) {  // two-level sum: chunks of 64 k
    const int64_t s1 = std::min(pairs, s0 + kChunkK / 2);
    __m512 acc[NB][CH][MR];
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_setzero_ps();
    int64_t s = s0;
    for (; s + 2 <= s1; s += 2)  // 2 pairs = one 64-byte line per stream
      for (int j = 0; j < NB; ++j) {
        prefetch_stream<MR>(wbs[j] + 2 * s * kBN);
        for (int c = 0; c < 2; ++c) pair_step(acc[j][c % CH], wbs[j] + 2 * (s + c) * kBN, s + c);
      }
    for (; s < s1; ++s)
      for (int j = 0; j < NB; ++j) pair_step(acc[j][0], wbs[j] + 2 * s * kBN, s);
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) total[j][m] = _mm512_add_ps(total[j][m], acc[j][c][m]);
  }
  for (int j = 0; j < NB; ++j) {
    const __m512 scale = _mm512_loadu_ps(wbs[j] + K * kBN);
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_mul_ps(total[j][m], scale);
    cpu::finish_columns16<T>(a, total[j], MR, m0, blocks[j] * kBN);
  }
}

GPT_FAST_AVX512 inline __m512 load_bf16x16(const uint8_t* p) {
  return cpu::bf16_bits_to_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <typename T, int MR, int NB>
GPT_FAST_AVX512 void int4_tile(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  constexpr int CH = MR * NB <= 4 ? 2 : 1;  // chains per row and block: k = 2p and 2p + 1 apart when few rows
  const int64_t K = a.K, G = a.G, groups = K / G, group_bytes = quant::group_bytes4(G);
  const uint8_t* wbs[NB];  // (K / G, 8 G + 64) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const float* x = a.x + m0 * K;             // (MR, K)
  const float* xsum = a.xsum + m0 * groups;  // (MR, K / G)
  // vpermps reads the low 4 bits of each index: lane value (a byte) -> its low nibble n -> n - 8, no mask needed
  const __m512 centred = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 scale[NB];
    for (int j = 0; j < NB; ++j) scale[j] = load_bf16x16(wbs[j] + g * group_bytes + 8 * G);
    const float* xg = x + g * G;
    for (int64_t p0 = 0; p0 < G / 2; p0 += kPairsPerSum) {  // two-level sum, as bits 8's chunks of 64 k
      const int64_t p1 = std::min(G / 2, p0 + kPairsPerSum);
      __m512 acc[NB][CH][MR];
      for (int j = 0; j < NB; ++j)
        for (int c = 0; c < CH; ++c)
          for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_setzero_ps();
      for (int64_t p = p0; p < p1; ++p) {
        for (int j = 0; j < NB; ++j) {
          const uint8_t* row = wbs[j] + g * group_bytes + p * kBN;
          if (p % 4 == 0) prefetch_stream<MR>(row);
          const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
          const __m512 lo = _mm512_permutexvar_ps(q, centred);                         // k = 2p
          const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), centred);  // k = 2p + 1
          for (int m = 0; m < MR; ++m) {
            acc[j][0][m] = _mm512_fmadd_ps(lo, _mm512_set1_ps(xg[m * K + 2 * p]), acc[j][0][m]);
            acc[j][CH - 1][m] = _mm512_fmadd_ps(hi, _mm512_set1_ps(xg[m * K + 2 * p + 1]), acc[j][CH - 1][m]);
          }
        }
      }
      for (int j = 0; j < NB; ++j)
        for (int m = 0; m < MR; ++m) {
          const __m512 sum = CH == 2 ? _mm512_add_ps(acc[j][0][m], acc[j][CH - 1][m]) : acc[j][0][m];
          total[j][m] = _mm512_fmadd_ps(scale[j], sum, total[j][m]);
        }
    }
    for (int j = 0; j < NB; ++j) {  // + (zero + 8 scale) * xsum: the centring moved into the zero point
      const __m512 zero = _mm512_fmadd_ps(_mm512_set1_ps(8.f), scale[j],
                                          load_bf16x16(wbs[j] + g * group_bytes + 8 * G + 2 * kBN));
      for (int m = 0; m < MR; ++m)
        total[j][m] = _mm512_fmadd_ps(zero, _mm512_set1_ps(xsum[m * groups + g]), total[j][m]);
    }
  }
  for (int j = 0; j < NB; ++j) cpu::finish_columns16<T>(a, total[j], MR, m0, blocks[j] * kBN);
}

// bits 4 with a bf16 x on AVX512_BF16 + VBMI. Per k pair row, lane L holds the bf16 pair (q[2p, c] - 8,
// q[2p + 1, c] - 8) of column c = kLaneColumn[L], made in two instructions from the row's 16 bytes broadcast to the
// four 128-bit lanes of a zmm: vpmultishiftqb puts the byte of column c in word 0 of lane L (low nibble in bits
// 3..0) and the byte shifted right by 4 in word 1 (high nibble in bits 3..0); vpermw maps each word's bits 4..0
// through the 16-entry table of q - 8 held twice, so bit 4 (the other nibble's lowest bit) does not matter. Then
// one vdpbf16ps per row with x's pair (x[2p], x[2p + 1]): exact products, fp32 sums. vpmultishiftqb moves bits only
// within a qword, and qword Q of the broadcast row holds columns 8 (Q % 2) .. 8 (Q % 2) + 7, so lanes 2Q and 2Q + 1
// take two of those: the lanes hold the columns permuted. The scales and zeros are loaded in the same order (one
// masked vpermw turns 16 bf16 into fp32 lanes) and the totals go back to column order once at the end. Against
// the previous vpmovzxbd, shift, or, and, vpermw: 3 instructions per 16 bytes instead of 6 at one row.
alignas(64) constexpr uint16_t kCentredBf16x2[32] = {
    0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, 0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0,
    0x40C0, 0x40E0, 0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, 0x0000, 0x3F80, 0x4000, 0x4040,
    0x4080, 0x40A0, 0x40C0, 0x40E0};
// vpmultishiftqb bit offsets: qword Q, lane e (0, 1) takes byte i = 2 (Q / 2) + e of the qword: offsets 8 i (word 0)
// and 8 i + 4 (word 1), each for both bytes of the word (only bits 4..0 of a word are read by vpermw).
alignas(64) constexpr uint8_t kSplitNibbles[64] = {
    0,  0,  4,  4,  8,  8,  12, 12, 0,  0,  4,  4,  8,  8,  12, 12,  // qwords 0, 1: bytes 0, 1
    16, 16, 20, 20, 24, 24, 28, 28, 16, 16, 20, 20, 24, 24, 28, 28,  // qwords 2, 3: bytes 2, 3
    32, 32, 36, 36, 40, 40, 44, 44, 32, 32, 36, 36, 40, 40, 44, 44,  // qwords 4, 5: bytes 4, 5
    48, 48, 52, 52, 56, 56, 60, 60, 48, 48, 52, 52, 56, 56, 60, 60};  // qwords 6, 7: bytes 6, 7
// Column of lane L: kLaneColumn[L] = 8 (Q % 2) + 2 (Q / 2) + e for L = 2 Q + e; words: (0, column) per lane, for
// vpermw masked to the high words (bf16 -> fp32); kColumnLane is the inverse, for vpermps back to column order.
alignas(64) constexpr uint16_t kTailToLanes[32] = {0, 0, 0, 1, 0, 8,  0, 9,  0, 2, 0, 3, 0, 10, 0, 11,
                                                   0, 4, 0, 5, 0, 12, 0, 13, 0, 6, 0, 7, 0, 14, 0, 15};
alignas(64) constexpr int32_t kColumnLane[16] = {0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15};

template <typename T, int MR, int NB>
GPT_FAST_AVX512_BF16_VBMI void int4_tile_dpbf16(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  constexpr int CH = 2;  // chains per row and block (alternate k pairs), as int8_tile_dpbf16
  const int64_t K = a.K, G = a.G, groups = K / G, group_bytes = quant::group_bytes4(G), pairs = K / 2;
  const uint8_t* wbs[NB];  // (K / G, 8 G + 64) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const uint32_t* xp = a.x_pairs + m0 * pairs;  // (MR, K / 2)
  const float* xsum = a.xsum + m0 * groups;     // (MR, K / G)
  const __m512i table = _mm512_load_si512(kCentredBf16x2), split = _mm512_load_si512(kSplitNibbles);
  const __m512i to_lanes = _mm512_load_si512(kTailToLanes);
  auto tail16 = [&](const uint8_t* p) GPT_FAST_AVX512_BF16_VBMI {  // 16 bf16 (column order) -> fp32 (lane order)
    const __m512i h = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, to_lanes, h));
  };
  auto pair_step = [&](__m512* acc, const uint8_t* row, const uint32_t* xg, int64_t p) GPT_FAST_AVX512_BF16_VBMI {
    const __m512i bytes = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
    const __m512bh w = (__m512bh)_mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(split, bytes), table);
    for (int m = 0; m < MR; ++m)
      acc[m] = _mm512_dpbf16_ps(acc[m], w, (__m512bh)_mm512_set1_epi32(static_cast<int>(xg[m * pairs + p])));
  };
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 scale[NB];
    for (int j = 0; j < NB; ++j) scale[j] = tail16(wbs[j] + g * group_bytes + 8 * G);
    const uint32_t* xg = xp + g * G / 2;
    for (int64_t p0 = 0; p0 < G / 2; p0 += kPairsPerSum) {
      const int64_t p1 = std::min(G / 2, p0 + kPairsPerSum);
      __m512 acc[NB][CH][MR];
      for (int j = 0; j < NB; ++j)
        for (int c = 0; c < CH; ++c)
          for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_setzero_ps();
      int64_t p = p0;
      for (; p + CH <= p1; p += CH)
        for (int c = 0; c < CH; ++c)
          for (int j = 0; j < NB; ++j) {
            const uint8_t* row = wbs[j] + g * group_bytes + (p + c) * kBN;
            if ((p + c) % 4 == 0) prefetch_stream<MR>(row);
            pair_step(acc[j][c], row, xg, p + c);
          }
      for (; p < p1; ++p)
        for (int j = 0; j < NB; ++j) pair_step(acc[j][0], wbs[j] + g * group_bytes + p * kBN, xg, p);
      for (int j = 0; j < NB; ++j)
        for (int m = 0; m < MR; ++m) {
          const __m512 sum = CH == 2 ? _mm512_add_ps(acc[j][0][m], acc[j][CH - 1][m]) : acc[j][0][m];
          total[j][m] = _mm512_fmadd_ps(scale[j], sum, total[j][m]);
        }
    }
    for (int j = 0; j < NB; ++j) {  // + (zero + 8 scale) * xsum, as int4_tile
      const __m512 zero =
          _mm512_fmadd_ps(_mm512_set1_ps(8.f), scale[j], tail16(wbs[j] + g * group_bytes + 8 * G + 2 * kBN));
      for (int m = 0; m < MR; ++m)
        total[j][m] = _mm512_fmadd_ps(zero, _mm512_set1_ps(xsum[m * groups + g]), total[j][m]);
    }
  }
  const __m512i column_lane = _mm512_load_si512(kColumnLane);
  for (int j = 0; j < NB; ++j) {
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_permutexvar_ps(column_lane, total[j][m]);
    cpu::finish_columns16<T>(a, total[j], MR, m0, blocks[j] * kBN);
  }
}

// bits 8 with a bf16 x on AMX (4+ rows, K % 32 == 0; the walk: amx_linear.h): each B tile is 16 k pairs of the
// block made into bf16 pairs by int8_rows_to_bf16_pairs, as int8_tile_dpbf16 makes them, the 16 x 16 fp32
// sums times the scales at the end. x_pairs holds x as bf16 rows padded to 16 rows.
template <typename T>
struct Int8AmxKernel {
  const QuantArgs<T>& a;
  GPT_FAST_AMX void fill_b(int64_t block, int64_t k0, uint16_t* b_tile) const {
    const uint8_t* rows = a.w + block * a.block_bytes + k0 * kBN;
    for (int p = 0; p < amx::kK / 2; ++p, rows += 2 * kBN) {
      if (p % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(rows) + kPrefetchFar, _MM_HINT_T0);
      _mm512_store_si512(b_tile + p * 32, int8_rows_to_bf16_pairs(rows));
    }
  }
  GPT_FAST_AMX void finish(int64_t block, __m512* total, int rows, int64_t m0) const {
    const __m512 scale = _mm512_loadu_ps(a.w + block * a.block_bytes + a.K * kBN);
    for (int m = 0; m < rows; ++m) total[m] = _mm512_mul_ps(total[m], scale);
    cpu::finish_columns16<T>(a, total, rows, m0, block * kBN);
  }
};

}  // namespace

template <typename T>
void quantized_blocks_amx(const QuantArgs<T>& a, int64_t block_begin, int64_t block_end) {
  amx::over_blocks(Int8AmxKernel<T>{a}, reinterpret_cast<const c10::BFloat16*>(a.x_pairs), a.M, a.K, block_begin,
                   block_end);
}
template void quantized_blocks_amx<float>(const QuantArgs<float>&, int64_t, int64_t);
template void quantized_blocks_amx<c10::BFloat16>(const QuantArgs<c10::BFloat16>&, int64_t, int64_t);
template void quantized_blocks_amx<c10::Half>(const QuantArgs<c10::Half>&, int64_t, int64_t);

template <typename T>
void quantized_blocks_avx512(const QuantArgs<T>& a, int64_t block_begin, int64_t block_end) {
  const bool int8 = a.bits == 8;
  // Row tiles of equal size, at most 8 rows each (M = 12: 6 + 6).
  const int64_t max_rows = 8;
  const int64_t tiles = (a.M + max_rows - 1) / max_rows, tile_rows = (a.M + tiles - 1) / tiles;
  auto by_groups = [&](auto streams) {
    over_block_groups<decltype(streams)::value>(block_begin, block_end, [&](auto nb, const int64_t* blocks) {
      constexpr int NB = decltype(nb)::value;
      for (int64_t m0 = 0; m0 < a.M; m0 += tile_rows) {
        with_rows<8>(std::min(tile_rows, a.M - m0), [&](auto mr) {
          constexpr int MR = decltype(mr)::value;
          // more than 8 sums (up to 16): only int8 with bf16 pairs or int8 x, which take 2 blocks at 5-8 rows (the
          // choice of NB below)
          if constexpr (MR * NB > 16) {
            TORCH_INTERNAL_ASSERT(false, "linear_quantized (avx512): ", MR, " rows x ", NB, " blocks per tile");
          } else if (int8 && a.x16) {
            int8_tile_dpwssd<T, MR, NB>(a, blocks, m0);
          } else if (int8 && a.xq) {
            int8_tile_vnni<T, MR, NB>(a, blocks, m0);
          } else if (int8 && a.x_pairs) {
            int8_tile_dpbf16<T, MR, NB>(a, blocks, m0);
          } else if constexpr (MR * NB > 8) {
            TORCH_INTERNAL_ASSERT(false, "linear_quantized (avx512): ", MR, " rows x ", NB, " blocks per tile");
          } else if (int8) {
            int8_tile<T, MR, NB>(a, blocks, m0);
          } else if (a.xq) {
            int4_tile_vnni<T, MR, NB>(a, blocks, m0);
          } else if (a.x_pairs) {
            int4_tile_dpbf16<T, MR, NB>(a, blocks, m0);
          } else {
            int4_tile<T, MR, NB>(a, blocks, m0);
          }
        });
      }
    });
  };
  // 1-2 rows read 4 streams side by side, except the VNNI tiles where they leave the prefetching to the hardware
  // (AMD Zen 4, vnni_hardware_prefetch_only): 2 streams there measured 1.04-1.12x the batch-1 decode tok/s of 4
  // (int8-a8, int4-a8; batch 2 1.11x / 1.20x), and 1 stream in between
  if (tile_rows <= 2 && !(a.xq && vnni_hardware_prefetch_only())) return by_groups(std::integral_constant<int, 4>{});
  if (tile_rows <= 4 || (int8 && (a.x_pairs || a.xq || a.x16))) return by_groups(std::integral_constant<int, 2>{});
  by_groups(std::integral_constant<int, 1>{});
}

template void quantized_blocks_avx512<float>(const QuantArgs<float>&, int64_t, int64_t);
template void quantized_blocks_avx512<c10::BFloat16>(const QuantArgs<c10::BFloat16>&, int64_t, int64_t);
template void quantized_blocks_avx512<c10::Half>(const QuantArgs<c10::Half>&, int64_t, int64_t);

}  // namespace gpt_fast::quantized
#endif  // GPT_FAST_HAVE_X86
