// Internal interface of gpt_fast::linear_quantized between its op file (linear_quantized.cpp: checks, x
// preparation, the scalar path, dispatch) and its vector tiers (linear_quantized_avx512.cpp,
// linear_quantized_avx2.cpp). Not part of any public interface. Layout: csrc/cpu/quantized_layout.h.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "cpu/cpu_isa.h"         // GPT_FAST_HAVE_X86
#include "cpu/linear_small_m.h"  // over_block_groups, kPrefetch, kChunkK
#include "cpu/quantized_layout.h"

#if GPT_FAST_HAVE_X86
#include <xmmintrin.h>  // _mm_prefetch
#endif

namespace gpt_fast::quantized {

using small_m::kChunkK;
using small_m::kPrefetch;
using small_m::kPrefetchFar;
using small_m::over_block_groups;
using small_m::with_rows;
constexpr int64_t kBN = quant::kBlockN;

#if GPT_FAST_HAVE_X86
// The prefetch distance of the weight-only tiles at 1-2 rows: 4 KiB on AMD Zen 5, where GPT-1 decode measured
// faster so than at 1 KiB (2 threads, one process alternating, 2026-12-07): int8 1.03-1.08x the tok/s at batch 1 while
// the machine read slowly (bf16 ~195 tok/s) and 1.19-1.38x while it read fast (bf16 ~235-270), 1.26x at batch 2,
// int4 g32 1.18x at batch 1 (2 KiB 1.01-1.20x, 8 KiB 1.21x / 1.24x / 1.18x, 16 KiB 1.19x); its AVX2 tier 1.05x (int8)
// and 1.01x (int4); bf16's linear_small_m there within noise of 1 KiB at 2-8 KiB. Elsewhere 1 KiB, as
// linear_small_m measured for bf16 (the quantized tiles not re-measured). A variable set when the library loads: read
// through a function-local static (a guard check per prefetch) GCC 12 emitted 2 of int8_tile<1, 4>'s 8 prefetches.
inline const int64_t near_prefetch = cpu::amd_zen5() ? 4096 : kPrefetch;

// Software prefetch into a weight stream, for the vector tiers: near_prefetch ahead with 1-2 rows per tile, 8 KiB
// with 3+ (which consume a stream more slowly; linear_small_m.h measured the distances). prefetcht0 is baseline
// x86-64.
template <int MR>
inline void prefetch_stream(const uint8_t* at) {
  _mm_prefetch(reinterpret_cast<const char*>(at) + (MR >= 3 ? kPrefetchFar : near_prefetch), _MM_HINT_T0);
}
#endif

// Everything a task needs. x and xsum are fp32 copies made once per call; the rest point into the op's tensors.
template <typename T>
struct QuantArgs {
  const float* x;           // (M, K) fp32 copy of the input
  const float* xsum;        // bits 4: (M, K / G) sums of x over each group (the zero-point term), else nullptr
  const uint32_t* x_pairs;  // bf16 x, even K, AVX512_BF16 (bits 4: and VBMI): (M, K / 2) bf16 pairs
                            // (x[m, 2s], x[m, 2s + 1]), else nullptr
  const int8_t* xq;         // x_bits 8 with the byte tiles (int4_tile_vnni.h, int8_tile_vnni.h; the AVX2 tier's
                            // int4_tile_bytes, int8_tile_bytes): (M, K) x rounded to int8, else nullptr
  const float* xscale;      //   with it: (M, K / G) the scale of each group of xq (x = xq * xscale, as x holds)
  const int32_t* xqsum;     //   with it: (M, K / G) the sum of xq over each group
  const int16_t* x16;       // bits 8 with a bf16 x from kX16MinRows rows on AVX512_VNNI (int8_tile_dpwssd.h): (M, K) x
                            // as 16-bit integers per group of kX16Group k, else nullptr
  const float* x16scale;    //   with it: (M, K / kX16Group) the power-of-two scale of each group
  const uint8_t* w;         // (NB, block_bytes) packed (quantized_layout.h)
  const T* bias;            // (N,) or nullptr
  const T* residual;        // (M, N) rows ld_residual apart, or nullptr
  T* out;                   // (M, N)
  int64_t M, K, N, G, block_bytes, ld_residual;
  int bits;
  bool gelu;
};

// The vector tiers over blocks [block_begin, block_end); call only when cpu::use_avx512() / cpu::use_avx2(), on x86
// builds (GPT_FAST_HAVE_X86). Instantiated for float, c10::BFloat16 and c10::Half.
template <typename T>
void quantized_blocks_avx512(const QuantArgs<T>& a, int64_t block_begin, int64_t block_end);
// bits 8, a bf16 x, K % 32 == 0, cpu::use_amx(): x_pairs holds x as bf16 rows padded to amx::padded_rows(M).
template <typename T>
void quantized_blocks_amx(const QuantArgs<T>& a, int64_t block_begin, int64_t block_end);
template <typename T>
void quantized_blocks_avx2(const QuantArgs<T>& a, int64_t block_begin, int64_t block_end);

// Whether the CPU has AVX512_VBMI (vpmultishiftqb, for bits 4 with a bf16 x; detected once). The CPUs with
// AVX512_BF16 have it except Cooper Lake, where bits 4 takes the fp32 FMA path of the avx512 tier instead.
inline bool has_avx512_vbmi() {
#if GPT_FAST_HAVE_X86
  static const bool vbmi = [] {
    __builtin_cpu_init();
    return static_cast<bool>(__builtin_cpu_supports("avx512vbmi"));
  }();
  return vbmi;
#else
  return false;
#endif
}

// Whether the CPU has AVX512_VNNI and AVX512_VBMI (int4_tile_vnni.h: bits 4 with x rounded to int8; detected once):
// Ice Lake, Sapphire Rapids and later Intel, AMD Zen 4 and later.
inline bool has_avx512_vnni_vbmi() {
#if GPT_FAST_HAVE_X86
  static const bool vnni = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
  }();
  return vnni;
#else
  return false;
#endif
}

// Whether the VNNI tiles leave their weight streams at 1-4 rows to the hardware prefetchers: on AMD Zen 4
// (cpu::amd_zen4), where it was measured (int4-a8 GPT-1 decode, 2 threads, one process alternating): without the
// software prefetch 1.08-1.28x the tokens/s of 8 KiB ahead at batch 1, 1.08x at 2, 1.04x at 4, 0.95x at 8 (1 KiB and
// 512 B ahead in between); the VNNI tile reads a stream faster than the FMA tiles, which lose 15% without theirs;
// int8-a8 at batch 1 likewise (2026-12-07 evening: 1.73x bf16 without, 1.62x at 512 B, 1.41-1.48x at 1-8 KiB). The
// walk (linear_quantized_avx512.cpp) then reads 2 weight streams at 1-2 rows instead of 4. Other CPUs keep 8 KiB ahead
// (measured on Sapphire Rapids when the tile was written; Zen 5 not measured).
inline bool vnni_hardware_prefetch_only() { return cpu::amd_zen4(); }
// Whether int8_tile_vnni's prefetches (5+ rows) go to L2 only (prefetcht1) rather than L1: on AMD Zen 4, where
// GPT-1's int8-a8 decode linears measured 1.17x / 1.21x / 1.14x / 1.12x faster so at M = 5 / 6 / 8 / 16 (2 threads,
// weights from memory, one process alternating, 2026-12-07; batch-8 decode 1.37-1.40x -> 1.47-1.53x bf16), while the
// tiles that compute longer per byte lost 5-10% with it (int8 with bf16 pairs, int4, int4-a8).
inline bool vnni_int8_prefetch_to_l2() { return cpu::amd_zen4(); }

// Little-endian reads of the fp32 / bf16 scales and zeros stored in the byte stream (unaligned).
inline float load_f32(const uint8_t* p) {
  uint32_t bits = uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
  float v;
  __builtin_memcpy(&v, &bits, 4);
  return v;
}
inline float load_bf16(const uint8_t* p) {
  uint32_t bits = (uint32_t{p[0]} | uint32_t{p[1]} << 8) << 16;
  float v;
  __builtin_memcpy(&v, &bits, 4);
  return v;
}

}  // namespace gpt_fast::quantized
