// Internal interface of gpt_fast::linear_small_m between its op file (linear_small_m.cpp: checks, the scalar,
// AVX-512, AVX512-BF16 and AMX paths) and its AVX2 tier (linear_small_m_avx2.cpp): the per-call arguments, the
// constants both use and the walk over several weight blocks side by side. Not part of any public interface.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "cpu/cpu_isa.h"  // amd_zen4
#include "cpu/linear_layout.h"

namespace gpt_fast::small_m {

constexpr int64_t kBN = cpu::kLinearBlockN;
// Software prefetch distance into each weight stream, in bytes. The hardware prefetcher stops at 4 KiB pages; 1 KiB
// ahead measured best of {0, 512, 1024, 2048, 4096} here (up to ~1.3x at M = 4, a little at M = 1).
constexpr int64_t kPrefetch = 1024;
// The distance for fp32 weights with 1-2 rows (decode): 2 KiB measured best of {1, 2, 3, 4} KiB on GPT-1's decode
// linears (2026-12-06, Sapphire Rapids, 2 threads, the AVX-512 and AVX2 tiers alternating, 3 rounds: M = 1 ~7-10%
// faster than 1 KiB, whole fp32 decode steps 16.2-17.7 -> 14.6-15.8 ms; M = 2 on AVX2 25-27 -> 29-30 GB/s; 3 KiB
// alike, 4 KiB in between; bf16 within noise, so the 16-bit types keep kPrefetch). Zen 5 capped to AVX2 had measured
// 1 KiB best for fp32 on one core (CPU time); not re-measured there since.
constexpr int64_t kPrefetchFp32 = 2048;
template <typename T>
constexpr int64_t kPrefetchNear = sizeof(T) == 4 ? kPrefetchFp32 : kPrefetch;  // 1-2 rows of T
// The distance for 3+ rows, which consume a stream more slowly: 8 KiB measured best of {1, 2, 4, 8, 16} KiB on
// the AVX-512 tiles (lm_head bf16, one core: M = 8 ~1.4x faster than 1 KiB ahead, M = 16 ~1.25x; 4 KiB within
// noise of 8), and 1.05-1.35x faster on the AVX2 tier at M = 4-16.
constexpr int64_t kPrefetchFar = 8192;
// Whether the AVX-512 tiles' kPrefetchFar prefetches go to L2 only (prefetcht1) rather than L1: on AMD Zen 4
// (cpu::amd_zen4), where GPT-1's decode linears measured faster so (2 threads, weights from memory, one process
// alternating, 2026-12-07): bf16 1.08x at M = 3, 1.06x at 4, 1.12x at 8; fp32 1.07x at 3, within noise at 8. Its
// L1 miss buffers then serve the tile's own loads; elsewhere (Sapphire Rapids, Zen 5: not measured) L1 as designed.
inline bool far_prefetch_to_l2() { return cpu::amd_zen4(); }
constexpr int64_t kChunkK = 64;  // k per inner sum: keeps fp32 rounding error near a blocked GEMM's

// Everything a task needs; pointers are to contiguous data except residual (row stride ld_residual).
template <typename T>
struct LinearArgs {
  const float* x;           // (M, K) fp32 copy of the input
  const uint32_t* x_pairs;  // (M, K / 2) bf16 pairs (x[m, 2s], x[m, 2s + 1]) for the vdpbf16ps path, else nullptr
  const T* w;               // (blocks, K, 16)
  const T* bias;            // (N,) or nullptr
  const T* residual;        // (M, N) rows ld_residual apart, or nullptr
  T* out;                   // (M, N)
  int64_t M, K, N, ld_residual;
  bool gelu;
  bool amx;  // bf16 only: take linear_blocks_amx (x_pairs then holds M rounded up to 16 rows)
};

// Calls tile(std::integral_constant<int, NB>{}, blocks) for every block of [begin, end), NB blocks at a time, the
// j-th taken from the j-th of NB equal parts of the range; the blocks left over go one at a time (NB = 1).
template <int NB, typename Tile>
inline void over_block_groups(int64_t begin, int64_t end, Tile&& tile) {
  const int64_t part = (end - begin) / NB;
  for (int64_t i = 0; i < part; ++i) {
    int64_t blocks[NB];
    for (int j = 0; j < NB; ++j) blocks[j] = begin + j * part + i;
    tile(std::integral_constant<int, NB>{}, blocks);
  }
  for (int64_t b = begin + NB * part; b < end; ++b) tile(std::integral_constant<int, 1>{}, &b);
}

// Calls tile(std::integral_constant<int, MR>{}) with MR = min(rows, MaxRows) (rows >= 1) as a compile-time
// constant, so a row tile's accumulators can live in registers.
template <int MaxRows, int MR = 1, typename Tile>
inline void with_rows(int64_t rows, Tile&& tile) {
  if constexpr (MR == MaxRows) {
    tile(std::integral_constant<int, MR>{});
  } else {
    if (rows <= MR) return tile(std::integral_constant<int, MR>{});
    with_rows<MaxRows, MR + 1>(rows, tile);
  }
}

// x (M, K) at strides (s0, s1) -> xf (M, K) row-major fp32, the copy both linear ops' tiles read: contiguous bf16 /
// fp16 / fp32 rows 8 values at a time on AVX2 CPUs (linear_small_m_avx2.cpp), any other strides or dtype one value
// at a time. Instantiated for float, double, c10::BFloat16 and c10::Half.
template <typename T>
void rows_to_float(const T* x, int64_t M, int64_t K, int64_t s0, int64_t s1, float* xf);

// The AVX2 + FMA (+F16C) path over blocks [block_begin, block_end) (linear_small_m_avx2.cpp); call only when
// cpu::use_avx2(), on x86 builds (GPT_FAST_HAVE_X86). Instantiated for float, c10::BFloat16 and c10::Half.
template <typename T>
void linear_blocks_avx2(const LinearArgs<T>& a, int64_t block_begin, int64_t block_end);

}  // namespace gpt_fast::small_m
