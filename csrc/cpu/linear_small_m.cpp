// CPU kernel for gpt_fast::linear_small_m: out = [gelu_tanh](x @ W + bias) [+ residual] for few rows (decode).
//
// With 1-4 rows a linear layer is bound by reading W, from ~8 rows by the multiply-adds; each weight element is read
// from memory once, from the blocked layout of csrc/cpu/linear_layout.h: a task owns whole 16-column blocks
// (at::parallel_for over blocks) and reads several side by side, one from each equal part of its range: 4 with 1-2 rows
// (one sequential stream per core reads ~26 GB/s on the 2-core machine here, four ~33 GB/s; on AMD Zen 4 2, left to
// the hardware prefetchers: see linear_blocks_avx512), 2 with 3+ rows. Rows go in
// equal tiles of at most 8 (M = 16: 8 + 8, M = 17: 6 + 6 + 5); a tile streams its blocks' K x 16 weights once (the
// first tile from memory, the next from cache) and keeps the 16-column sums of every row x block in registers (8 rows x
// 2 blocks = 16 fp32 chains: 2 FMA / vdpbf16ps per cycle at 4 / 6 cycles latency on Zen 5 need 8-12), folded every 64 k
// into a running total for accuracy. 3+ rows consume a stream more slowly and prefetch it 8 KiB ahead instead of 1 KiB
// (fp32: 2 KiB, kPrefetchFp32; into L2 only on Zen 4, far_prefetch_to_l2) (most of the gain below; 2 blocks alone
// gave 1.0-1.1x in a standalone loop). Against one block per 8-row tile with 1 KiB prefetch (the previous design),
// GPT-1's layers at M = 8 / 16 / 32 run 1.4-1.75x / 1.4-1.6x / 1.25-1.45x faster (Zen 5, one core, bf16 and fp32),
// M = 1-2 unchanged: a 16-row bf16 step costs 1.65-1.9x a 1-row one (was 2.6-2.7x).
// Bias, GELU and the residual add happen on those registers before the only store. x is converted once to an fp32 (M,
// K) buffer (and, for bf16, to bf16 k pairs), so any strides are accepted.
// Paths, chosen at run time (csrc/cpu/vec.h, GPT_FAST_CPU_ISA): bf16 with >= 4 rows, K % 32 == 0 and AMX uses
// tdpbf16ps tiles (16 rows x 16 columns x 32 k); other bf16 with AVX512_BF16 uses vdpbf16ps (2 k per instruction);
// fp32/bf16/fp16 with AVX-512 convert to fp32 and FMA; with AVX2 (+FMA, F16C) the same in 8 lanes
// (linear_small_m_avx2.cpp); elsewhere a portable scalar loop reads the same layout.
// Limits: larger M works but re-reads each block (from cache) once per 8-row tile (AMX: 16); use a GEMM for
// prefill. The residual is copied when its last dim is not contiguous.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <memory>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/amx_linear.h"
#include "cpu/linear_layout.h"
#include "cpu/linear_small_m.h"
#include "cpu/vec.h"

namespace gpt_fast {
namespace {

using namespace small_m;  // LinearArgs, kBN, kPrefetch, kChunkK, over_block_groups, linear_blocks_avx2

constexpr int kRowTile = 8;

template <typename T>
void linear_blocks_scalar(const LinearArgs<T>& a, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const T* wb = a.w + b * a.K * kBN;  // (K, 16)
    const int64_t n0 = b * kBN, width = std::min(kBN, a.N - n0);
    for (int64_t m = 0; m < a.M; ++m) {
      float acc[kBN] = {};
      const float* xr = a.x + m * a.K;
      for (int64_t k0 = 0; k0 < a.K; k0 += kChunkK) {
        float part[kBN] = {};
        for (int64_t k = k0; k < std::min(a.K, k0 + kChunkK); ++k) {
          for (int64_t j = 0; j < kBN; ++j) part[j] += static_cast<float>(wb[k * kBN + j]) * xr[k];
        }
        for (int64_t j = 0; j < kBN; ++j) acc[j] += part[j];
      }
      for (int64_t j = 0; j < width; ++j) {
        float v = acc[j];
        if (a.bias) v += static_cast<float>(a.bias[n0 + j]);
        if (a.gelu) v = cpu::gelu_tanh_scalar(v);
        if (a.residual) v += static_cast<float>(a.residual[m * a.ld_residual + n0 + j]);
        a.out[m * a.N + n0 + j] = static_cast<T>(v);
      }
    }
  }
}

#if GPT_FAST_HAVE_X86
// vpermw indices turning two k rows of a block (w[k, 0..15], w[k + 1, 0..15]) into pairs (w[k, j], w[k + 1, j]).
alignas(64) constexpr uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                  8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

// PD bytes ahead of at (PD = 0: none), into L1, or into L2 only with to_l2 (far_prefetch_to_l2).
template <int64_t PD>
inline void prefetch_weights(const void* at, bool to_l2 = false) {
  if constexpr (PD > 0) cpu::prefetch_line(reinterpret_cast<const char*>(at) + PD, to_l2);
}

// Independent accumulator chains per row: enough that MR * chains covers the FMA latency even for one row.
constexpr int chains_for(int rows) { return rows == 1 ? 4 : rows == 2 ? 2 : 1; }

// Rows [m0, m0 + MR) of NB 16-column blocks (block indices in blocks[]): each block's weights are streamed once,
// the NB streams side by side, CH k per step (one chain each), converted to fp32 and FMA'd with broadcast x values.
template <typename T, int MR, int NB, int64_t PD>
GPT_FAST_AVX512 inline void linear_tile_avx512(const LinearArgs<T>& a, const int64_t* blocks, int64_t m0) {
  using V = cpu::Vec16<T>;
  constexpr int CH = std::max(1, std::min(std::max(2, chains_for(MR) / NB), 16 / (MR * NB)));  // <= 16 sums
  const int64_t K = a.K;
  const bool to_l2 = PD == kPrefetchFar && far_prefetch_to_l2();
  const T* wbs[NB];  // (K, 16) each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * K * kBN;
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  const float* x = a.x + m0 * K;
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {  // two-level sum: chunks of kChunkK k, then the chunk sums
    const int64_t k1 = std::min(K, k0 + kChunkK);
    __m512 acc[NB][CH][MR];
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_setzero_ps();
    auto k_step = [&](int j, int c, int64_t k) GPT_FAST_AVX512 {
      const __m512 w = V::load(wbs[j] + k * kBN);
      for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[m * K + k]), acc[j][c][m]);
    };
    int64_t k = k0;
    for (; k + CH <= k1; k += CH) {
      for (int c = 0; c < CH; ++c) {
        for (int j = 0; j < NB; ++j) {
          if ((c * sizeof(T) * kBN) % 64 == 0) prefetch_weights<PD>(wbs[j] + (k + c) * kBN, to_l2);  // once a line
          k_step(j, c, k + c);
        }
      }
    }
    for (; k < k1; ++k)
      for (int j = 0; j < NB; ++j) k_step(j, 0, k);
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) total[j][m] = _mm512_add_ps(total[j][m], acc[j][c][m]);
  }
  for (int j = 0; j < NB; ++j) cpu::finish_columns16<T>(a, total[j], MR, m0, blocks[j] * kBN);
}

// The same for bf16 with vdpbf16ps: one instruction multiplies 16 columns x 2 k and accumulates in fp32, half the
// FMAs of the path above. Two consecutive k rows of a block (contiguous, 64 bytes) are interleaved into pairs
// (w[k, j], w[k + 1, j]) with one vpermw; x's matching pair is a 32-bit broadcast. An odd last k goes the fp32 way.
template <int MR, int NB, int64_t PD>
GPT_FAST_AVX512_BF16 inline void linear_tile_dpbf16(const LinearArgs<c10::BFloat16>& a, const int64_t* blocks,
                                                    int64_t m0) {
  constexpr int CH = std::max(1, chains_for(MR) / NB);
  const int64_t K = a.K, pairs = K / 2;
  const bool to_l2 = PD == kPrefetchFar && far_prefetch_to_l2();
  const c10::BFloat16* wbs[NB];  // (K, 16) each
  for (int j = 0; j < NB; ++j) wbs[j] = a.w + blocks[j] * K * kBN;
  const uint32_t* xp = a.x_pairs + m0 * pairs;
  const __m512i interleave = _mm512_load_si512(kInterleave);
  auto pair_step = [&](__m512* acc, const c10::BFloat16* wb, int64_t s) GPT_FAST_AVX512_BF16 {
    prefetch_weights<PD>(wb + 2 * s * kBN, to_l2);
    const __m512bh w = (__m512bh)_mm512_permutexvar_epi16(interleave, _mm512_loadu_si512(wb + 2 * s * kBN));
    for (int m = 0; m < MR; ++m) {
      acc[m] = _mm512_dpbf16_ps(acc[m], w, (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[m * pairs + s])));
    }
  };
  __m512 total[NB][MR];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MR; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t s0 = 0; s0 < pairs; s0 += kChunkK / 2) {  // two-level sum as in linear_tile_avx512
    const int64_t s1 = std::min(pairs, s0 + kChunkK / 2);
    __m512 acc[NB][CH][MR];
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) acc[j][c][m] = _mm512_setzero_ps();
    int64_t s = s0;
    for (; s + CH <= s1; s += CH)
      for (int c = 0; c < CH; ++c)
        for (int j = 0; j < NB; ++j) pair_step(acc[j][c], wbs[j], s + c);
    for (; s < s1; ++s)
      for (int j = 0; j < NB; ++j) pair_step(acc[j][0], wbs[j], s);
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < CH; ++c)
        for (int m = 0; m < MR; ++m) total[j][m] = _mm512_add_ps(total[j][m], acc[j][c][m]);
  }
  for (int j = 0; j < NB; ++j) {
    if (K % 2) {
      const __m512 w = cpu::Vec16<c10::BFloat16>::load(wbs[j] + (K - 1) * kBN);
      for (int m = 0; m < MR; ++m) {
        total[j][m] = _mm512_fmadd_ps(w, _mm512_set1_ps(a.x[(m0 + m) * K + K - 1]), total[j][m]);
      }
    }
    cpu::finish_columns16<c10::BFloat16>(a, total[j], MR, m0, blocks[j] * kBN);
  }
}

// bf16 with AMX, for M >= amx::kMinRows and K % 32 == 0 (the walk: amx_linear.h): each 1 KiB piece of a block (32 k
// x 16 columns) is re-laid out into k pairs through L1 with vpermw, prefetched kPrefetchFar ahead; x_pairs holds x
// as bf16 rows padded to 16 rows.
struct Bf16AmxKernel {
  const LinearArgs<c10::BFloat16>& a;
  __m512i interleave;
  GPT_FAST_AMX void fill_b(int64_t block, int64_t k0, uint16_t* b_tile) const {
    const c10::BFloat16* wb = a.w + block * a.K * kBN;
    for (int p = 0; p < amx::kK / 2; ++p) {
      const c10::BFloat16* rows = wb + (k0 + 2 * p) * kBN;
      prefetch_weights<kPrefetchFar>(rows);
      _mm512_store_si512(b_tile + p * 32, _mm512_permutexvar_epi16(interleave, _mm512_loadu_si512(rows)));
    }
  }
  GPT_FAST_AMX void finish(int64_t block, __m512* total, int rows, int64_t m0) const {
    cpu::finish_columns16<c10::BFloat16>(a, total, rows, m0, block * kBN);
  }
};

GPT_FAST_AMX void linear_blocks_amx(const LinearArgs<c10::BFloat16>& a, int64_t block_begin, int64_t block_end) {
  const Bf16AmxKernel kernel{a, _mm512_load_si512(kInterleave)};
  amx::over_blocks(kernel, reinterpret_cast<const c10::BFloat16*>(a.x_pairs), a.M, a.K, block_begin, block_end);
}

// Calls tile(std::integral_constant<int, MR>{}) with MR = rows (1..kRowTile) as a compile-time constant.
template <typename Tile>
void with_row_tile(int64_t rows, Tile&& tile) {
  switch (rows) {
    case 1: return tile(std::integral_constant<int, 1>{});
    case 2: return tile(std::integral_constant<int, 2>{});
    case 3: return tile(std::integral_constant<int, 3>{});
    case 4: return tile(std::integral_constant<int, 4>{});
    case 5: return tile(std::integral_constant<int, 5>{});
    case 6: return tile(std::integral_constant<int, 6>{});
    case 7: return tile(std::integral_constant<int, 7>{});
    default: return tile(std::integral_constant<int, kRowTile>{});
  }
}

template <typename T>
void linear_blocks_avx512(const LinearArgs<T>& a, int64_t block_begin, int64_t block_end) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (a.amx) return linear_blocks_amx(a, block_begin, block_end);
  }
  // Row tiles of equal size, at most kRowTile each (M = 12: 6 + 6, M = 17: 6 + 6 + 5), so no tile is left with
  // too few rows to cover the FMA latency.
  const int64_t tiles = (a.M + kRowTile - 1) / kRowTile, tile_rows = (a.M + tiles - 1) / tiles;
  auto by_groups = [&](auto streams, auto distance) {
    constexpr int64_t PD = decltype(distance)::value;
    over_block_groups<decltype(streams)::value>(block_begin, block_end, [&](auto nb, const int64_t* blocks) {
      constexpr int NB = decltype(nb)::value;
      for (int64_t m0 = 0; m0 < a.M; m0 += tile_rows) {
        with_row_tile(std::min(tile_rows, a.M - m0), [&](auto mr) {
          constexpr int MR = decltype(mr)::value;
          if constexpr (MR * NB > 2 * kRowTile) {  // never: NB = 4 only for <= 2 rows, NB = 2 for <= 8 (below)
            TORCH_INTERNAL_ASSERT(false, "linear_small_m: ", MR, " rows x ", NB, " blocks per tile");
          } else {
            if constexpr (std::is_same_v<T, c10::BFloat16>) {
              if (a.x_pairs) return linear_tile_dpbf16<MR, NB, PD>(a, blocks, m0);
            }
            linear_tile_avx512<T, MR, NB, PD>(a, blocks, m0);
          }
        });
      }
    });
  };
  using Near = std::integral_constant<int64_t, kPrefetchNear<T>>;
  using Far = std::integral_constant<int64_t, kPrefetchFar>;
  // AMD Zen 4 at 1-2 rows: 2 streams and no software prefetch, measured there against 4 streams 1 KiB (fp32 2 KiB)
  // ahead (GPT-1 decode, 2 threads, one process alternating, 2026-12-07): fp32 1.09-1.14x the tok/s at batch 1 and
  // 1.11x at 2, bf16 1.01-1.08x and 1.06-1.07x; 4 streams without prefetch in between, 2 with it 0.91x (bf16)
  if (tile_rows <= 2 && cpu::amd_zen4())
    return by_groups(std::integral_constant<int, 2>{}, std::integral_constant<int64_t, 0>{});
  if (tile_rows <= 2) return by_groups(std::integral_constant<int, 4>{}, Near{});
  by_groups(std::integral_constant<int, 2>{}, Far{});
}
#endif

// (rows, K / 2) pairs (x[m, 2s], x[m, 2s + 1]) of a bf16 x with strides (s0, s1), low half first; rows >= M, the
// rows past M are zeros. For even K this is x as contiguous bf16 rows.
inline void bf16_pairs(const c10::BFloat16* x, int64_t M, int64_t rows, int64_t K, int64_t s0, int64_t s1,
                       std::vector<uint32_t>& pairs) {
  const int64_t P = K / 2;
  pairs.assign(rows * P, 0u);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t s = 0; s < P; ++s)
      pairs[m * P + s] = uint32_t{x[m * s0 + 2 * s * s1].x} | uint32_t{x[m * s0 + (2 * s + 1) * s1].x} << 16;
}
template <typename T>
void bf16_pairs(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, std::vector<uint32_t>&) {
  TORCH_INTERNAL_ASSERT(false, "bf16_pairs on a non-bf16 input");
}

at::Tensor linear_small_m_cpu(const at::Tensor& x, const at::Tensor& packed_weight, int64_t out_features,
                              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                              bool gelu) {
  constexpr const char* op = "gpt_fast::linear_small_m";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (..., K), got a scalar");
  check_float_dtype(x, op, "x");
  const int64_t K = x.size(-1);
  TORCH_CHECK(K > 0, op, ": x must have a non-empty last dimension (K), got shape ", x.sizes());
  TORCH_CHECK(out_features > 0, op, ": out_features must be positive, got ", out_features);
  const int64_t N = out_features, blocks = cpu::linear_blocks(N);
  check_dim(packed_weight, 3, op, "packed_weight");
  check_same_device(packed_weight, x, op, "packed_weight");
  check_same_dtype(packed_weight, x, op, "packed_weight");
  TORCH_CHECK(packed_weight.size(2) == kBN && packed_weight.size(0) == blocks, op, ": packed_weight has shape ",
              packed_weight.sizes(), " but out_features=", N, " needs (", blocks, ", K, ", kBN,
              "); pack it with pack_linear_weight");
  TORCH_CHECK(packed_weight.size(1) == K, op, ": x has K=", K, " input features but packed_weight was packed for ",
              packed_weight.size(1));
  TORCH_CHECK(packed_weight.is_contiguous(), op, ": packed_weight must be contiguous, got strides ",
              packed_weight.strides());
  check_packed_out_features(packed_weight, N, op);  // N exactly, not only ceil(N / 16)
  if (bias) check_vector(*bias, N, x, op, "bias");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  if (residual) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(out_shape), op, ": residual must have the output shape ",
                at::IntArrayRef(out_shape), ", got ", residual->sizes());
    check_same_device(*residual, x, op, "residual");
    check_same_dtype(*residual, x, op, "residual");
  }

  const int64_t M = x.numel() / K;
  auto out = x.new_empty(out_shape);
  if (M == 0) return out;
  at::Tensor x2 = x.reshape({M, K});
  at::Tensor res2, bias_c = bias ? bias->contiguous() : at::Tensor();
  if (residual) {
    res2 = residual->reshape({M, N});
    if (res2.stride(1) != 1) res2 = res2.contiguous();
  }
  std::unique_ptr<float[]> xf(new float[M * K]);  // (M, K) fp32 copy of x, whatever its strides (not zeroed)
  std::vector<uint32_t> x_pairs;  // (M, K / 2) bf16 pairs, only for the vdpbf16ps path
  [[maybe_unused]] const bool vector = cpu::use_avx512(), avx2 = cpu::use_avx2();
  const bool dpbf16 = x.scalar_type() == at::kBFloat16 && K >= 2 && cpu::use_avx512_bf16();
  const bool amx = dpbf16 && M >= amx::kMinRows && K % amx::kK == 0 && cpu::use_amx();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "linear_small_m_cpu", [&] {
    const scalar_t* xp = x2.const_data_ptr<scalar_t>();
    const int64_t s0 = x2.stride(0), s1 = x2.stride(1);
    rows_to_float(xp, M, K, s0, s1, xf.get());
    if (dpbf16) bf16_pairs(xp, M, amx ? amx::padded_rows(M) : M, K, s0, s1, x_pairs);
    LinearArgs<scalar_t> a{xf.get(), dpbf16 ? x_pairs.data() : nullptr, packed_weight.const_data_ptr<scalar_t>(),
                           bias ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                           residual ? res2.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
                           M, K, N, residual ? res2.stride(0) : 0, gelu, amx};
    const int64_t grain = std::max<int64_t>(1, 32768 / (K * kBN));  // >= ~32K weights per task
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
#if GPT_FAST_HAVE_X86
      if constexpr (!std::is_same_v<scalar_t, double>) {
        if (vector) return linear_blocks_avx512<scalar_t>(a, begin, end);
        if (avx2) return linear_blocks_avx2<scalar_t>(a, begin, end);
      }
#endif
      linear_blocks_scalar<scalar_t>(a, begin, end);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("linear_small_m", &linear_small_m_cpu); }

}  // namespace gpt_fast
