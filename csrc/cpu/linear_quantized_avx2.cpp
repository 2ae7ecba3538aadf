// The AVX2 + FMA tier of gpt_fast::linear_quantized (interface: linear_quantized.h; checks, x preparation, the
// scalar path: linear_quantized.cpp; layout: quantized_layout.h). For CPUs with AVX2 but no AVX-512.
//
// Same walk as the AVX-512 tier (linear_quantized_avx512.cpp): MR rows x NB blocks side by side, each block's byte
// stream read once per row tile with a prefetch near_prefetch (3+ rows: 8 KiB) ahead, but one k of a block's 16
// columns is two 8-lane vectors:
//   bits 8: two 8-byte loads -> vpmovsxbd -> vcvtdq2ps -> FMAs; sums folded every 64 k into a running total on the
//           stack, times the 16 fp32 scales at the end.
//   bits 4: two 8-byte loads of one k pair -> vpmovzxbd; low nibbles (k = 2p) and high ones (k = 2p + 1) ->
//           q - 8 -> vcvtdq2ps -> FMAs into the same two column-half chains; every 32 pairs total += scale * sum,
//           per group total += (zero + 8 scale) * xsum[m, g] (linear_quantized.cpp explains the centring).
//   bits 4 with x rounded to int8 (x_bits 8): int4_tile_bytes, 2 k per byte product (vpmaddubsw), exact integers.
//   bits 8 with x rounded to int8 (x_bits 8): int8_tile_bytes, |q| times x with q's sign (vpmaddubsw + vpmaddwd).
// Accumulators: 2 MR NB ymm, at most 12 of the 16.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cpu/linear_quantized.h"
#include "cpu/vec_avx2.h"  // GPT_FAST_HAVE_X86, GPT_FAST_AVX2, gelu_tanh_fp32_avx2

#if GPT_FAST_HAVE_X86
namespace gpt_fast::quantized {
namespace {

constexpr int kPairsPerSum = 32;  // int4: k pairs summed before folding into the total

GPT_FAST_AVX2 inline __m128i load8(const uint8_t* p) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)); }

GPT_FAST_AVX2 inline __m256 load_bf16x8(const uint8_t* p) { return cpu::bf16_bits_to_fp32_avx2(_mm_loadu_si128(
    reinterpret_cast<const __m128i*>(p))); }

// Bias, GELU, residual on the sums total[m][0..15] of rows [m0, m0 + rows), columns [n0, n0 + 16) clipped to N.
template <typename T>
GPT_FAST_AVX2 void finish_tile(const QuantArgs<T>& a, const float (*total)[kBN], int rows, int64_t m0, int64_t n0) {
  const int64_t width = std::min(kBN, a.N - n0);
  alignas(32) float bias[kBN] = {}, out[kBN];
  if (a.bias)
    for (int64_t j = 0; j < width; ++j) bias[j] = static_cast<float>(a.bias[n0 + j]);
  for (int m = 0; m < rows; ++m) {
    for (int h = 0; h < 2; ++h) {
      __m256 v = _mm256_add_ps(_mm256_loadu_ps(total[m] + 8 * h), _mm256_load_ps(bias + 8 * h));
      if (a.gelu) v = cpu::gelu_tanh_fp32_avx2(v);
      _mm256_store_ps(out + 8 * h, v);
    }
    const T* res = a.residual ? a.residual + (m0 + m) * a.ld_residual + n0 : nullptr;
    T* dst = a.out + (m0 + m) * a.N + n0;
    for (int64_t j = 0; j < width; ++j) dst[j] = static_cast<T>(res ? out[j] + static_cast<float>(res[j]) : out[j]);
  }
}

// total[j][m][0..15] += acc[j][m], two 8-lane halves each.
template <int MR, int NB>
GPT_FAST_AVX2 inline void fold(float (*total)[MR][kBN], __m256 (*acc)[MR][2]) {
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m)
      for (int h = 0; h < 2; ++h) {
        float* t = total[j][m] + 8 * h;
        _mm256_storeu_ps(t, _mm256_add_ps(_mm256_loadu_ps(t), acc[j][m][h]));
      }
}

template <typename T, int MR, int NB>
GPT_FAST_AVX2 void int8_tile(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  const int64_t K = a.K;
  const uint8_t* wbs[NB];  // (K + 4, 16) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const float* x = a.x + m0 * K;  // (MR, K)
  alignas(32) float total[NB][MR][kBN] = {};
  __m256 acc[NB][MR][2];
  auto k_step = [&](int64_t k) GPT_FAST_AVX2 {
    for (int j = 0; j < NB; ++j) {
      const uint8_t* row = wbs[j] + k * kBN;
      const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8(row)));
      const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8(row + 8)));
      for (int m = 0; m < MR; ++m) {
        const __m256 xv = _mm256_set1_ps(x[m * K + k]);
        acc[j][m][0] = _mm256_fmadd_ps(lo, xv, acc[j][m][0]);
        acc[j][m][1] = _mm256_fmadd_ps(hi, xv, acc[j][m][1]);
      }
    }
  };
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t k1 = std::min(K, k0 + kChunkK);
    for (int j = 0; j < NB; ++j)
      for (int m = 0; m < MR; ++m) acc[j][m][0] = acc[j][m][1] = _mm256_setzero_ps();
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {  // 4 k = one 64-byte line per stream
      for (int j = 0; j < NB; ++j) prefetch_stream<MR>(wbs[j] + k * kBN);
      for (int i = 0; i < 4; ++i) k_step(k + i);
    }
    for (; k < k1; ++k) k_step(k);
    fold<MR, NB>(total, acc);
  }
  for (int j = 0; j < NB; ++j) {
    const float* scale = reinterpret_cast<const float*>(wbs[j] + K * kBN);  // unaligned reads are fine here
    for (int m = 0; m < MR; ++m)
      for (int h = 0; h < 2; ++h)
        _mm256_storeu_ps(total[j][m] + 8 * h, _mm256_mul_ps(_mm256_loadu_ps(total[j][m] + 8 * h),
                                                            _mm256_loadu_ps(scale + 8 * h)));
    finish_tile<T>(a, total[j], MR, m0, blocks[j] * kBN);
  }
}

template <typename T, int MR, int NB>
GPT_FAST_AVX2 void int4_tile(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  const int64_t K = a.K, G = a.G, groups = K / G, group_bytes = quant::group_bytes4(G);
  const uint8_t* wbs[NB];  // (K / G, 8 G + 64) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const float* x = a.x + m0 * K;             // (MR, K)
  const float* xsum = a.xsum + m0 * groups;  // (MR, K / G)
  const __m256i low4 = _mm256_set1_epi32(0xF), eight = _mm256_set1_epi32(8);
  alignas(32) float total[NB][MR][kBN] = {};
  __m256 acc[NB][MR][2];
  for (int64_t g = 0; g < groups; ++g) {
    const float* xg = x + g * G;
    for (int64_t p0 = 0; p0 < G / 2; p0 += kPairsPerSum) {  // two-level sum, as bits 8's chunks of 64 k
      const int64_t p1 = std::min(G / 2, p0 + kPairsPerSum);
      for (int j = 0; j < NB; ++j)
        for (int m = 0; m < MR; ++m) acc[j][m][0] = acc[j][m][1] = _mm256_setzero_ps();
      for (int64_t p = p0; p < p1; ++p) {
        for (int j = 0; j < NB; ++j) {
          const uint8_t* row = wbs[j] + g * group_bytes + p * kBN;
          if (p % 4 == 0) prefetch_stream<MR>(row);
          for (int h = 0; h < 2; ++h) {  // columns 8 h .. 8 h + 7
            const __m256i q = _mm256_cvtepu8_epi32(load8(row + 8 * h));
            const __m256 lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(q, low4), eight));
            const __m256 hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(q, 4), eight));
            for (int m = 0; m < MR; ++m) {
              acc[j][m][h] = _mm256_fmadd_ps(lo, _mm256_set1_ps(xg[m * K + 2 * p]), acc[j][m][h]);
              acc[j][m][h] = _mm256_fmadd_ps(hi, _mm256_set1_ps(xg[m * K + 2 * p + 1]), acc[j][m][h]);
            }
          }
        }
      }
      for (int j = 0; j < NB; ++j) {  // total += scale * sum
        const uint8_t* scales = wbs[j] + g * group_bytes + 8 * G;
        for (int h = 0; h < 2; ++h) {
          const __m256 s = load_bf16x8(scales + 16 * h);
          for (int m = 0; m < MR; ++m) {
            float* t = total[j][m] + 8 * h;
            _mm256_storeu_ps(t, _mm256_fmadd_ps(s, acc[j][m][h], _mm256_loadu_ps(t)));
          }
        }
      }
    }
    for (int j = 0; j < NB; ++j) {  // + (zero + 8 scale) * xsum: the centring moved into the zero point
      const uint8_t* tail = wbs[j] + g * group_bytes + 8 * G;  // 16 bf16 scales, 16 bf16 zeros
      for (int h = 0; h < 2; ++h) {
        const __m256 zero = _mm256_fmadd_ps(_mm256_set1_ps(8.f), load_bf16x8(tail + 16 * h),
                                            load_bf16x8(tail + 2 * kBN + 16 * h));
        for (int m = 0; m < MR; ++m) {
          float* t = total[j][m] + 8 * h;
          _mm256_storeu_ps(t, _mm256_fmadd_ps(zero, _mm256_set1_ps(xsum[m * groups + g]), _mm256_loadu_ps(t)));
        }
      }
    }
  }
  for (int j = 0; j < NB; ++j) finish_tile<T>(a, total[j], MR, m0, blocks[j] * kBN);
}

// bits 4 with x rounded to int8 (x_bits 8), G % 4 == 0: bytes multiplied, as int4_tile_vnni.h does with VNNI, here
// with vpmaddubsw (q in [0, 15] unsigned times x's int8, pairs summed in int16). One step is rows p, p + 1 of a group
// (k = 2p .. 2p + 3 of 16 columns) in one 32-byte load, row p in lane 0 and row p + 1 in lane 1. The low nibbles
// (vpand) are k = 2p | 2p + 2, the high ones (vpsrlw 4, vpand) k = 2p + 1 | 2p + 3; vpunpck{l,h}bw of the two puts
// each column's two k side by side, columns 0-7 (half 0) and 8-15 (half 1). x's 4 bytes are broadcast and vpshufb'd
// to (x[2p], x[2p + 1]) words in lane 0 and (x[2p + 2], x[2p + 3]) in lane 1, so vpmaddubsw gives one column's 2-k
// sum per word, |.| <= 2 * 15 * 127 = 3810. Those add in int16 over at most kStepsPerSum steps (|.| <= 30480 <
// 2^15), then the two lanes are widened and added in int32 (a column per dword, column order). Sums start at
// -8 sum_g xq (centred, as the other tiles); total += scale * xscale * sum per sum, + (zero + 8 scale) * xsum per group.
// 5 integer ops per 64 weights, + 5 per row (the int16 adds save vpmaddwd's widening per step).
constexpr int64_t kStepsPerSum = 8;

template <typename T, int MR, int NB>
GPT_FAST_AVX2 void int4_tile_bytes(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  const int64_t K = a.K, G = a.G, groups = K / G, group_bytes = quant::group_bytes4(G);
  const uint8_t* wbs[NB];  // (K / G, 8 G + 64) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const int8_t* xq = a.xq + m0 * K;              // (MR, K)
  const float* xscale = a.xscale + m0 * groups;  // (MR, K / G)
  const int32_t* xqsum = a.xqsum + m0 * groups;  // (MR, K / G)
  const float* xsum = a.xsum + m0 * groups;      // (MR, K / G)
  const __m256i nibbles = _mm256_set1_epi8(0x0F);
  const __m256i x_pairs = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,  // lane 0: x[2p], x[2p + 1]
                                           2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  alignas(32) float total[NB][MR][kBN] = {};
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* xg = xq + g * G;
    const uint8_t* tails[NB];  // 16 bf16 scales, 16 bf16 zeros
    for (int j = 0; j < NB; ++j) {
      tails[j] = wbs[j] + g * group_bytes + 8 * G;
      prefetch_stream<MR>(tails[j]);  // the rows' prefetches skip the tails
    }
    for (int64_t p0 = 0; p0 < G / 2; p0 += 2 * kStepsPerSum) {
      const int64_t p1 = std::min(G / 2, p0 + 2 * kStepsPerSum);
      __m256i acc[NB][MR][2];  // int16 sums of q xq, a column's k pair per word
      for (int j = 0; j < NB; ++j)
        for (int m = 0; m < MR; ++m) acc[j][m][0] = acc[j][m][1] = _mm256_setzero_si256();
      for (int64_t p = p0; p < p1; p += 2) {
        __m256i xv[MR];
        for (int m = 0; m < MR; ++m) {
          int32_t x4;
          std::memcpy(&x4, xg + m * K + 2 * p, 4);
          xv[m] = _mm256_shuffle_epi8(_mm256_set1_epi32(x4), x_pairs);
        }
        for (int j = 0; j < NB; ++j) {
          const uint8_t* rows = wbs[j] + g * group_bytes + p * kBN;
          if (p % 4 == 0) prefetch_stream<MR>(rows);
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows));
          const __m256i lo = _mm256_and_si256(w, nibbles), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibbles);
          const __m256i q[2] = {_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi)};
          for (int m = 0; m < MR; ++m)
            for (int h = 0; h < 2; ++h)
              acc[j][m][h] = _mm256_add_epi16(acc[j][m][h], _mm256_maddubs_epi16(q[h], xv[m]));
        }
      }
      for (int j = 0; j < NB; ++j)
        for (int h = 0; h < 2; ++h) {
          const __m256 scale = load_bf16x8(tails[j] + 16 * h);
          for (int m = 0; m < MR; ++m) {
            __m256i sum = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[j][m][h])),
                                           _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[j][m][h], 1)));
            if (p0 == 0) sum = _mm256_add_epi32(sum, _mm256_set1_epi32(-8 * xqsum[m * groups + g]));
            float* t = total[j][m] + 8 * h;
            _mm256_store_ps(t, _mm256_fmadd_ps(_mm256_mul_ps(scale, _mm256_set1_ps(xscale[m * groups + g])),
                                               _mm256_cvtepi32_ps(sum), _mm256_load_ps(t)));
          }
        }
    }
    for (int j = 0; j < NB; ++j)
      for (int h = 0; h < 2; ++h) {  // + (zero + 8 scale) * xsum: the centring moved into the zero point
        const __m256 centred_zero = _mm256_fmadd_ps(_mm256_set1_ps(8.f), load_bf16x8(tails[j] + 16 * h),
                                                    load_bf16x8(tails[j] + 2 * kBN + 16 * h));
        for (int m = 0; m < MR; ++m) {
          float* t = total[j][m] + 8 * h;
          _mm256_store_ps(t, _mm256_fmadd_ps(centred_zero, _mm256_set1_ps(xsum[m * groups + g]), _mm256_load_ps(t)));
        }
      }
  }
  for (int j = 0; j < NB; ++j) finish_tile<T>(a, total[j], MR, m0, blocks[j] * kBN);
}

// bits 8 with x rounded to int8 (x_bits 8), G % 4 == 0: bytes multiplied, 4 k a dword as int8_tile_vnni.h does
// with VNNI. vpmaddubsw multiplies unsigned bytes by signed ones and saturates its int16 pair sums, so the unsigned
// side is |q| (vpabsb: 128 for q = -128 too) and the signed one x with q's sign (vpsignb), |pair| <= 2 * 128 * 127 <
// 2^15; vpmaddwd with ones adds a column's two pairs into int32. One step is k .. k + 3 of a block (64 bytes, rows
// of 16 columns): vpermq + vpshufb put each row pair's bytes of a column side by side, vpunpck{l,h}wd the two row
// pairs, giving dwords of columns (0-3 | 8-11) and (4-7 | 12-15). Per 64 weights: 2 loads, 2 vpermq, 2 vpshufb, 2
// vpunpck, 2 vpabsb, then per row 2 x (vpsignb, vpmaddubsw, vpmaddwd, vpaddd); the FMA tile spends 16 conversions
// and 8 FMAs per row. Exact int32 group sums, then total += xscale * sum per group, times the column scales last.
template <typename T, int MR, int NB>
GPT_FAST_AVX2 void int8_tile_bytes(const QuantArgs<T>& a, const int64_t* blocks, int64_t m0) {
  const int64_t K = a.K, G = a.G, groups = K / G;
  const uint8_t* wbs[NB];  // (K + 4, 16) bytes each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * a.block_bytes;
  const int8_t* xq = a.xq + m0 * K;              // (MR, K)
  const float* xscale = a.xscale + m0 * groups;  // (MR, K / G)
  // per lane: the two rows' bytes of a column side by side
  const __m256i pair_bytes = _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,
                                              0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) float total[NB][MR][kBN] = {};
  for (int64_t g = 0; g < groups; ++g) {
    __m256i acc[NB][MR][2];  // int32 sums of q xq: columns (0-3 | 8-11) and (4-7 | 12-15)
    for (int j = 0; j < NB; ++j)
      for (int m = 0; m < MR; ++m) acc[j][m][0] = acc[j][m][1] = _mm256_setzero_si256();
    for (int64_t k = g * G; k < (g + 1) * G; k += 4) {
      __m256i xb[MR];
      for (int m = 0; m < MR; ++m) {
        int32_t x4;
        std::memcpy(&x4, xq + m * K + k, 4);
        xb[m] = _mm256_set1_epi32(x4);
      }
      for (int j = 0; j < NB; ++j) {
        const uint8_t* rows = wbs[j] + k * kBN;
        prefetch_stream<MR>(rows);
        // (row k | row k + 1) and (row k + 2 | row k + 3) -> per lane a column's two rows side by side
        const __m256i r01 = _mm256_shuffle_epi8(
            _mm256_permute4x64_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows)), 0xD8), pair_bytes);
        const __m256i r23 = _mm256_shuffle_epi8(
            _mm256_permute4x64_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + 32)), 0xD8),
            pair_bytes);
        const __m256i q[2] = {_mm256_unpacklo_epi16(r01, r23), _mm256_unpackhi_epi16(r01, r23)};
        const __m256i magnitude[2] = {_mm256_abs_epi8(q[0]), _mm256_abs_epi8(q[1])};
        for (int m = 0; m < MR; ++m)
          for (int h = 0; h < 2; ++h) {
            const __m256i pairs = _mm256_maddubs_epi16(magnitude[h], _mm256_sign_epi8(xb[m], q[h]));
            acc[j][m][h] = _mm256_add_epi32(acc[j][m][h], _mm256_madd_epi16(pairs, ones));
          }
      }
    }
    for (int j = 0; j < NB; ++j)
      for (int m = 0; m < MR; ++m) {
        const __m256 s = _mm256_set1_ps(xscale[m * groups + g]);
        const __m256 f0 = _mm256_cvtepi32_ps(acc[j][m][0]), f1 = _mm256_cvtepi32_ps(acc[j][m][1]);
        float* t = total[j][m];
        _mm256_store_ps(t, _mm256_fmadd_ps(_mm256_permute2f128_ps(f0, f1, 0x20), s, _mm256_load_ps(t)));  // 0-7
        _mm256_store_ps(t + 8, _mm256_fmadd_ps(_mm256_permute2f128_ps(f0, f1, 0x31), s, _mm256_load_ps(t + 8)));
      }
  }
  for (int j = 0; j < NB; ++j) {
    const float* scale = reinterpret_cast<const float*>(wbs[j] + K * kBN);  // 16 fp32 (unaligned loads)
    for (int m = 0; m < MR; ++m)
      for (int h = 0; h < 2; ++h) {
        float* t = total[j][m] + 8 * h;
        _mm256_store_ps(t, _mm256_mul_ps(_mm256_load_ps(t), _mm256_loadu_ps(scale + 8 * h)));
      }
    finish_tile<T>(a, total[j], MR, m0, blocks[j] * kBN);
  }
}

}  // namespace

template <typename T>
void quantized_blocks_avx2(const QuantArgs<T>& a, int64_t block_begin, int64_t block_end) {
  const bool int8 = a.bits == 8;
  const int64_t max_rows = 6;  // equal row tiles of at most this many rows
  const int64_t tiles = (a.M + max_rows - 1) / max_rows, tile_rows = (a.M + tiles - 1) / tiles;
  auto by_groups = [&](auto streams) {
    over_block_groups<decltype(streams)::value>(block_begin, block_end, [&](auto nb, const int64_t* blocks) {
      constexpr int NB = decltype(nb)::value;
      for (int64_t m0 = 0; m0 < a.M; m0 += tile_rows) {
        with_rows<6>(std::min(tile_rows, a.M - m0), [&](auto mr) {
          constexpr int MR = decltype(mr)::value;
          if constexpr (2 * MR * NB > 12) {  // never: see the choice of NB below
            TORCH_INTERNAL_ASSERT(false, "linear_quantized (avx2): ", MR, " rows x ", NB, " blocks per tile");
          } else if (int8 && a.xq) {
            int8_tile_bytes<T, MR, NB>(a, blocks, m0);
          } else if (int8) {
            int8_tile<T, MR, NB>(a, blocks, m0);
          } else if (a.xq) {
            int4_tile_bytes<T, MR, NB>(a, blocks, m0);
          } else {
            int4_tile<T, MR, NB>(a, blocks, m0);
          }
        });
      }
    });
  };
  if (tile_rows <= 1) return by_groups(std::integral_constant<int, 4>{});
  if (tile_rows <= 3) return by_groups(std::integral_constant<int, 2>{});
  by_groups(std::integral_constant<int, 1>{});
}

template void quantized_blocks_avx2<float>(const QuantArgs<float>&, int64_t, int64_t);
template void quantized_blocks_avx2<c10::BFloat16>(const QuantArgs<c10::BFloat16>&, int64_t, int64_t);
template void quantized_blocks_avx2<c10::Half>(const QuantArgs<c10::Half>&, int64_t, int64_t);

}  // namespace gpt_fast::quantized
#endif  // GPT_FAST_HAVE_X86
