// The AVX2 + FMA (+F16C) tier of gpt_fast::linear_small_m (interface: linear_small_m.h; the op, its checks and the
// other paths: linear_small_m.cpp). For CPUs with AVX2 but no AVX-512 (AMD Zen 2/3, Intel before Skylake-SP /
// Ice Lake, Alder Lake and later client cores), which otherwise ran the scalar loop.
//
// Layout and loop: the packed weight is (ceil(N / 16), K, 16) (linear_layout.h), so one k row of a block is 16
// columns = two 8-lane fp32 vectors. A task streams each of its blocks once per tile of up to 6 rows, keeping
// 2 x rows x streams fp32 sums in registers (at most 12 of the 16 ymm registers, the rest holding the weights and
// the broadcast x); sums are folded every 64 k into a running total on the stack, as in the AVX-512 path. Weights
// are converted in registers: fp16 with F16C (vcvtph2ps); bf16 with no widening at all: one 256-bit load of the
// 16 bf16 of a row read as eight 32-bit lanes gives the even columns by a left shift of 16 and the odd ones by
// masking off the low half, so the sums are kept in even/odd column order and put back in order once per tile.
// Like the AVX-512 path, 1 row reads 4 blocks side by side (one stream per core reads ~26 GB/s on the 2-core
// machine here, several ~31-33 GB/s) and 2-3 rows read 2. fp32 with 4+ rows reads one block at a time in equal
// row tiles of <= 6 (M = 8: 4 + 4, the second re-reading the block from L2); bf16/fp16 with 2+ rows use tiles of
// <= 2 rows x 2 blocks (M = 8: 4 tiles), measured 13-18% faster there at M = 4 and 8 than 4-row tiles (one core,
// Zen 5 capped to AVX2), while fp32 measured the same or better with the larger tiles. From ~4 rows the tier is
// bound by FMA issue, not memory: at M = 8 one core does ~17.5 GB/s fp32, ~10 GB/s bf16 (4.4 / 5.5 G weights/s).
// With 3+ rows the weight streams are prefetched 8 KiB ahead (kPrefetchFar; 1-2 rows: fp32 2 KiB, kPrefetchFp32;
// bf16 / fp16 1 KiB, but with one row 2 KiB: kPrefetchHalf), measured 1.15-1.4x faster at M = 4, 1.05-1.3x at M = 8
// and 1.0-1.2x at M = 16 (GPT-1's layers, one core, fp32 and bf16). Bias, GELU and the residual on fp32 vectors, then
// one converting store (once per output, not per weight).
#include "cpu/linear_small_m.h"

#include <algorithm>
#include <type_traits>

#include "cpu/vec_avx2.h"  // GPT_FAST_HAVE_X86, GPT_FAST_AVX2, gelu_tanh_fp32_avx2

#if GPT_FAST_HAVE_X86
namespace gpt_fast::small_m {
namespace {

constexpr int kMaxRows = 6;  // rows per fp32 tile: 2 x 6 accumulators
// Prefetch distance of the 16-bit weights (bf16, fp16) with one row. 2 KiB measured best of {1, 1.5, 2, 2.5, 3, 4}
// KiB (and of 6 streams side by side instead of 4) on GPT-1's decode linears (12 layers + LM head, one core, CPU
// time, Zen 5 capped to AVX2): 7.0-7.2 ms a token against 7.5-8.2 ms at 1 KiB; fp32 stayed best at 1 KiB there (but
// not on Sapphire Rapids: kPrefetchFp32). At the same bytes per second a bf16 stream is consumed through twice the
// instructions of an fp32 one. fp16 (F16C conversions) takes the same distance, not measured on its own.
constexpr int64_t kPrefetchHalf = 2048;

// One k row of a block (16 weights) as two 8-lane fp32 vectors: columns 0-7 and 8-15, except bf16: the even
// columns (0, 2, .., 14) and the odd ones (kEvenOdd).
template <typename T>
struct Row16;

template <>
struct Row16<float> {
  static constexpr bool kEvenOdd = false;
  GPT_FAST_AVX2 static void load(const float* p, __m256& lo, __m256& hi) {
    lo = _mm256_loadu_ps(p);
    hi = _mm256_loadu_ps(p + 8);
  }
};

template <>
struct Row16<c10::Half> {
  static constexpr bool kEvenOdd = false;
  GPT_FAST_AVX2 static void load(const c10::Half* p, __m256& lo, __m256& hi) {
    lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  }
};

template <>
struct Row16<c10::BFloat16> {
  static constexpr bool kEvenOdd = true;
  GPT_FAST_AVX2 static void load(const c10::BFloat16* p, __m256& even, __m256& odd) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));  // lane i: w[2i+1] << 16 | w[2i]
    even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
};

// Bias, GELU and residual on the sums total[m][0..15] (in Row16<T>'s order) of rows [m0, m0 + rows), columns
// [n0, n0 + 16) clipped to N, then the only store: 8-lane loads and stores (vec_avx2.h's conversions, round to
// nearest even as static_cast), through load_part / store_part in the last block when N % 16 != 0.
template <typename T>
GPT_FAST_AVX2 void finish_tile(const LinearArgs<T>& a, const float (*total)[kBN], int rows, int64_t m0,
                               int64_t n0) {
  using V = cpu::Vec8<T>;
  const int64_t width = std::min(kBN, a.N - n0);
  const int64_t w_lo = std::min<int64_t>(width, 8), w_hi = width - w_lo;  // columns in each half
  const bool full = width == kBN;
  // row[off, off + n) as fp32 lanes (the rest 0); row + off is formed only when n > 0 (it may lie past the end).
  auto load = [&](const T* row, int64_t off, int64_t n) GPT_FAST_AVX2 {
    if (full) return V::load(row + off);
    return n > 0 ? cpu::load_part(row + off, n) : _mm256_setzero_ps();
  };
  __m256 bias_lo = _mm256_setzero_ps(), bias_hi = _mm256_setzero_ps();
  if (a.bias) bias_lo = load(a.bias, n0, w_lo), bias_hi = load(a.bias, n0 + 8, w_hi);
  for (int m = 0; m < rows; ++m) {
    __m256 lo = _mm256_loadu_ps(total[m]), hi = _mm256_loadu_ps(total[m] + 8);
    if constexpr (Row16<T>::kEvenOdd) {  // (even, odd) columns -> (0-7, 8-15)
      const __m256 a03_811 = _mm256_unpacklo_ps(lo, hi), a47_1215 = _mm256_unpackhi_ps(lo, hi);
      lo = _mm256_permute2f128_ps(a03_811, a47_1215, 0x20);
      hi = _mm256_permute2f128_ps(a03_811, a47_1215, 0x31);
    }
    lo = _mm256_add_ps(lo, bias_lo);
    hi = _mm256_add_ps(hi, bias_hi);
    if (a.gelu) lo = cpu::gelu_tanh_fp32_avx2(lo), hi = cpu::gelu_tanh_fp32_avx2(hi);
    if (a.residual) {
      const T* res = a.residual + (m0 + m) * a.ld_residual;
      lo = _mm256_add_ps(lo, load(res, n0, w_lo));
      hi = _mm256_add_ps(hi, load(res, n0 + 8, w_hi));
    }
    T* dst = a.out + (m0 + m) * a.N;
    if (full) {
      V::store(dst + n0, lo);
      V::store(dst + n0 + 8, hi);
    } else {
      cpu::store_part(dst + n0, lo, w_lo);
      if (w_hi > 0) cpu::store_part(dst + n0 + 8, hi, w_hi);
    }
  }
}

// Rows [m0, m0 + MR) times NB blocks (indices in blocks[]), the NB weight streams side by side: per k, each block's
// row is converted to two fp32 vectors and FMA'd with the broadcast x[m, k] of every row.
template <typename T, int MR, int NB, int64_t PD>
GPT_FAST_AVX2 void linear_tile(const LinearArgs<T>& a, const int64_t* blocks, int64_t m0) {
  static_assert(2 * MR * NB <= 12, "accumulators must leave ymm registers for the weights and x");
  constexpr int64_t kLineK = 64 / (kBN * sizeof(T));  // k rows per 64-byte line: 1 (fp32) or 2 (bf16, fp16)
  const int64_t K = a.K;
  const T* wbs[NB];  // (K, 16) each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * K * kBN;
  alignas(32) float total[NB][MR][kBN] = {};  // running sums, Row16<T>'s column order
  const float* x = a.x + m0 * K;              // (MR, K)
  __m256 acc[NB][MR][2];
  auto k_step = [&](int64_t k) GPT_FAST_AVX2 {
    for (int j = 0; j < NB; ++j) {
      __m256 lo, hi;
      Row16<T>::load(wbs[j] + k * kBN, lo, hi);
      for (int m = 0; m < MR; ++m) {
        const __m256 xv = _mm256_set1_ps(x[m * K + k]);
        acc[j][m][0] = _mm256_fmadd_ps(lo, xv, acc[j][m][0]);
        acc[j][m][1] = _mm256_fmadd_ps(hi, xv, acc[j][m][1]);
      }
    }
  };
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {  // two-level sum: chunks of kChunkK k, then the chunk sums
    const int64_t k1 = std::min(K, k0 + kChunkK);
    for (int j = 0; j < NB; ++j)
      for (int m = 0; m < MR; ++m) acc[j][m][0] = acc[j][m][1] = _mm256_setzero_ps();
    int64_t k = k0;
    for (; k + kLineK <= k1; k += kLineK) {
      for (int j = 0; j < NB; ++j) _mm_prefetch(reinterpret_cast<const char*>(wbs[j] + k * kBN) + PD, _MM_HINT_T0);
      for (int64_t i = 0; i < kLineK; ++i) k_step(k + i);
    }
    for (; k < k1; ++k) k_step(k);
    for (int j = 0; j < NB; ++j)
      for (int m = 0; m < MR; ++m)
        for (int h = 0; h < 2; ++h)
          _mm256_store_ps(total[j][m] + 8 * h, _mm256_add_ps(_mm256_load_ps(total[j][m] + 8 * h), acc[j][m][h]));
  }
  for (int j = 0; j < NB; ++j) finish_tile<T>(a, total[j], MR, m0, blocks[j] * kBN);
}

}  // namespace

template <typename T>
void linear_blocks_avx2(const LinearArgs<T>& a, int64_t block_begin, int64_t block_end) {
  // Row tiles of equal size, at most max_rows each (fp32 M = 7: 4 + 3, M = 8: 4 + 4; bf16/fp16 M = 8: 4 x 2).
  const int64_t max_rows = sizeof(T) == 4 ? kMaxRows : 2;
  const int64_t tiles = (a.M + max_rows - 1) / max_rows, tile_rows = (a.M + tiles - 1) / tiles;
  auto by_groups = [&](auto streams, auto distance) {
    constexpr int64_t PD = decltype(distance)::value;
    over_block_groups<decltype(streams)::value>(block_begin, block_end, [&](auto nb, const int64_t* blocks) {
      constexpr int NB = decltype(nb)::value;
      for (int64_t m0 = 0; m0 < a.M; m0 += tile_rows) {
        with_rows<kMaxRows>(std::min(tile_rows, a.M - m0), [&](auto mr) {
          constexpr int MR = decltype(mr)::value;
          if constexpr (2 * MR * NB > 12) {  // never: NB = 4 only for 1 row, NB = 2 for <= 3 (below)
            TORCH_INTERNAL_ASSERT(false, "linear_small_m (avx2): ", MR, " rows x ", NB, " blocks per tile");
          } else {
            linear_tile<T, MR, NB, PD>(a, blocks, m0);
          }
        });
      }
    });
  };
  // 3+ rows prefetch further ahead (kPrefetchFar), as on AVX-512.
  auto with_distance = [&](auto streams) {
    if (a.M >= 3) return by_groups(streams, std::integral_constant<int64_t, kPrefetchFar>{});
    by_groups(streams, std::integral_constant<int64_t, kPrefetchNear<T>>{});
  };
  if (tile_rows <= 1) {
    if constexpr (sizeof(T) == 2)  // bf16 / fp16, one row: 2 KiB ahead (kPrefetchHalf)
      return by_groups(std::integral_constant<int, 4>{}, std::integral_constant<int64_t, kPrefetchHalf>{});
    return with_distance(std::integral_constant<int, 4>{});
  }
  if (tile_rows <= 3) return with_distance(std::integral_constant<int, 2>{});
  with_distance(std::integral_constant<int, 1>{});
}

template void linear_blocks_avx2<float>(const LinearArgs<float>&, int64_t, int64_t);
template void linear_blocks_avx2<c10::BFloat16>(const LinearArgs<c10::BFloat16>&, int64_t, int64_t);
template void linear_blocks_avx2<c10::Half>(const LinearArgs<c10::Half>&, int64_t, int64_t);

}  // namespace gpt_fast::small_m
#endif  // GPT_FAST_HAVE_X86

namespace gpt_fast::small_m {

#if GPT_FAST_HAVE_X86
namespace {
// One contiguous row, 8 values a step (the strided scalar loop took ~10 us for 8 rows of 3072 on Zen 4, a third
// of an int8-a8 layer call's cost outside its tiles).
template <typename T>
GPT_FAST_AVX2 void row_to_float_avx2(const T* x, int64_t K, float* xf) {
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) _mm256_storeu_ps(xf + k, cpu::Vec8<T>::load(x + k));
  for (; k < K; ++k) xf[k] = static_cast<float>(x[k]);
}
}  // namespace
#endif

template <typename T>
void rows_to_float(const T* x, int64_t M, int64_t K, int64_t s0, int64_t s1, float* xf) {
#if GPT_FAST_HAVE_X86
  if constexpr (!std::is_same_v<T, double>) {
    if (s1 == 1 && cpu::use_avx2()) {
      for (int64_t m = 0; m < M; ++m) row_to_float_avx2(x + m * s0, K, xf + m * K);
      return;
    }
  }
#endif
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xf[m * K + k] = static_cast<float>(x[m * s0 + k * s1]);
}

template void rows_to_float<float>(const float*, int64_t, int64_t, int64_t, int64_t, float*);
template void rows_to_float<double>(const double*, int64_t, int64_t, int64_t, int64_t, float*);
template void rows_to_float<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, int64_t, int64_t, float*);
template void rows_to_float<c10::Half>(const c10::Half*, int64_t, int64_t, int64_t, int64_t, float*);

}  // namespace gpt_fast::small_m
