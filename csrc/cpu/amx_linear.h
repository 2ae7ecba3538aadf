// The AMX walk shared by the decode linear kernels whose weights become bf16 on the way in: linear_small_m (bf16
// weights, re-laid out) and linear_quantized (int8 weights, converted exactly to bf16). x goes in as bf16 rows padded
// to a multiple of 16 rows, (M16, K) row-major; per 16-row tile, kStreams 16-column weight blocks are read side
// by side (the j-th from the j-th equal part of the task's range, as the AVX-512 paths read theirs), each with its
// own accumulator tile: C_j (16 x 16 fp32) += A (16 rows x 32 k of x) . B_j (32 k x 16 columns) for every 32 k, with
// tdpbf16ps. The kernel fills each B tile (16 k pairs x 16 columns x 2 bf16, the pair layout tdpbf16ps needs)
// through L1 and finishes each block's 16 x 16 sums (scale, bias, GELU, residual, store).
// Tiles: tmm0 = A, tmm1 / tmm2 = B (alternating between streams), tmm3.. = C_j.
// Against one block at a time with 1 KiB prefetch (linear_small_m, Sapphire Rapids, 2 threads, GPT-1's layers at 16
// rows from memory, alternating builds): 1.2-1.3x faster, 82-102% of the read roofline instead of 65-82%. 4 streams
// (tmm3..tmm6) against 2: bf16 the same, int8 at 8 rows 1.05-1.15x faster (its B tiles cost more to fill).
// Kernel: a type with GPT_FAST_AMX member functions (GCC does not pass a function's target attribute on to the
// lambdas inside it, hence no lambdas here):
//   void fill_b(int64_t block, int64_t k0, uint16_t* b_tile) const;  // rows k0..k0+31 of the block, as pairs
//   void finish(int64_t block, __m512* total, int rows, int64_t m0) const;  // sums of rows [m0, m0 + rows)
// Call only when cpu::use_amx() is true; the code is compiled on x86 builds only (GPT_FAST_HAVE_X86), the constants
// everywhere.
#pragma once
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "cpu/vec.h"  // GPT_FAST_AMX, immintrin

namespace gpt_fast::amx {

constexpr int kRows = 16, kK = 32;  // a tile: 16 rows of x, 32 k per tdpbf16ps
constexpr int kStreams = 4;
constexpr int64_t kMinRows = 4;  // from this many rows on (below, vdpbf16ps keeps up with memory)
constexpr int kTileWords = kK / 2 * 32;  // uint16 per B tile: (16 k pairs, 16 columns x 2)
constexpr int64_t kBN = 16;
constexpr int64_t kMaxKeptK = 8192;  // over_blocks keeps the converted B tiles of K up to this (1 MiB)
constexpr int64_t kMinKeptRows = 2 * kRows;  // ... for more rows than this

// x's rows as the A tiles read them: M rounded up to whole 16-row tiles (the extra rows zero).
constexpr int64_t padded_rows(int64_t M) { return (M + kRows - 1) / kRows * kRows; }

#if GPT_FAST_HAVE_X86

// GCC's tile intrinsics paste the tile number into asm text: it must be a literal, hence these switches on J.
template <int J>
GPT_FAST_AMX inline void load_b_and_multiply(const uint16_t* b_tile) {
  static_assert(J >= 0 && J < 4, "4 streams at most: tmm3..tmm6");
  if constexpr (J == 0) { _tile_loadd(1, b_tile, 64); _tile_dpbf16ps(3, 0, 1); }
  if constexpr (J == 1) { _tile_loadd(2, b_tile, 64); _tile_dpbf16ps(4, 0, 2); }
  if constexpr (J == 2) { _tile_loadd(1, b_tile, 64); _tile_dpbf16ps(5, 0, 1); }
  if constexpr (J == 3) { _tile_loadd(2, b_tile, 64); _tile_dpbf16ps(6, 0, 2); }
}
template <int J>
GPT_FAST_AMX inline void zero_c() {
  if constexpr (J == 0) _tile_zero(3);
  if constexpr (J == 1) _tile_zero(4);
  if constexpr (J == 2) _tile_zero(5);
  if constexpr (J == 3) _tile_zero(6);
}
template <int J>
GPT_FAST_AMX inline void store_c(float* c_tile) {
  if constexpr (J == 0) _tile_stored(3, c_tile, kBN * 4);
  if constexpr (J == 1) _tile_stored(4, c_tile, kBN * 4);
  if constexpr (J == 2) _tile_stored(5, c_tile, kBN * 4);
  if constexpr (J == 3) _tile_stored(6, c_tile, kBN * 4);
}

// Streams J.. for the 32 k at k0: each B tile filled, loaded and multiplied into its C.
template <int J, int NB, typename Kernel>
GPT_FAST_AMX void streams_step(const Kernel& kernel, const int64_t* blocks, int64_t k0, uint16_t* b_tiles) {
  kernel.fill_b(blocks[J], k0, b_tiles + J * kTileWords);
  load_b_and_multiply<J>(b_tiles + J * kTileWords);
  if constexpr (J + 1 < NB) streams_step<J + 1, NB>(kernel, blocks, k0, b_tiles);
}

// Streams J..: each B tile of the 32 k at k0 made into b_tiles (no multiply).
template <int J, int NB, typename Kernel>
GPT_FAST_AMX void fill_streams(const Kernel& kernel, const int64_t* blocks, int64_t k0, uint16_t* b_tiles) {
  kernel.fill_b(blocks[J], k0, b_tiles + J * kTileWords);
  if constexpr (J + 1 < NB) fill_streams<J + 1, NB>(kernel, blocks, k0, b_tiles);
}

// Streams J..: each B tile loaded from b_tiles (made earlier) and multiplied into its C.
template <int J, int NB>
GPT_FAST_AMX void multiply_streams(const uint16_t* b_tiles) {
  load_b_and_multiply<J>(b_tiles + J * kTileWords);
  if constexpr (J + 1 < NB) multiply_streams<J + 1, NB>(b_tiles);
}

// C_J.. zeroed (finish = false) or stored and finished for rows [m0, m0 + rows) (finish = true).
template <int J, int NB, bool finish, typename Kernel>
GPT_FAST_AMX void streams_c(const Kernel& kernel, const int64_t* blocks, float* c_tile, int64_t m0, int rows) {
  if constexpr (finish) {
    store_c<J>(c_tile);
    __m512 total[kRows];
    for (int m = 0; m < rows; ++m) total[m] = _mm512_load_ps(c_tile + m * kBN);
    kernel.finish(blocks[J], total, rows, m0);
  } else {
    zero_c<J>();
  }
  if constexpr (J + 1 < NB) streams_c<J + 1, NB, finish>(kernel, blocks, c_tile, m0, rows);
}

// The blocks' sums for every row tile. With `kept` (room for K / 32 steps x NB B tiles; over_blocks passes it for
// more than kMinKeptRows rows), each B tile is made once, kept (L2-sized) and loaded by every row tile: the blocks
// are converted once per call, as a dequantize-then-GEMM would, instead of once per 16 rows. Otherwise (nullptr)
// each row tile makes them again as it goes.
template <int NB, typename Kernel>
GPT_FAST_AMX void block_group(const Kernel& kernel, const int64_t* blocks, const c10::BFloat16* x, int64_t M,
                              int64_t K, uint16_t* b_tiles, uint16_t* kept, float* c_tile) {
  const bool keep = kept != nullptr;
  if (keep)
    for (int64_t k0 = 0; k0 < K; k0 += kK) fill_streams<0, NB>(kernel, blocks, k0, kept + k0 / kK * NB * kTileWords);
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, M - m0));
    streams_c<0, NB, false>(kernel, blocks, c_tile, m0, rows);
    for (int64_t k0 = 0; k0 < K; k0 += kK) {
      _tile_loadd(0, x + m0 * K + k0, K * 2);
      if (keep)
        multiply_streams<0, NB>(kept + k0 / kK * NB * kTileWords);
      else
        streams_step<0, NB>(kernel, blocks, k0, b_tiles);
    }
    streams_c<0, NB, true>(kernel, blocks, c_tile, m0, rows);
  }
}

// Blocks [block_begin, block_end) of out = x W, x: (M rounded up to 16, K) bf16 rows, K % 32 == 0.
template <typename Kernel>
GPT_FAST_AMX void over_blocks(const Kernel& kernel, const c10::BFloat16* x, int64_t M, int64_t K, int64_t block_begin,
                              int64_t block_end) {
  struct alignas(64) {
    uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  } config;
  for (int t = 0; t < 3 + kStreams; ++t) config.rows[t] = kRows, config.colsb[t] = 64;
  _tile_loadconfig(&config);
  alignas(64) uint16_t b_tiles[kStreams * kTileWords];
  alignas(64) float c_tile[kRows * kBN];  // (16 rows, 16 columns)
  // block_group's kept B tiles: K / 32 steps x kStreams tiles of 1 KiB (K <= kMaxKeptK: at most 1 MiB, in L2), from
  // 3 row tiles on; if the allocation fails, block_group makes them per row tile instead. int8 from memory, 2
  // threads, kept against made per row tile: 24-32 rows 0.8-1.0x (converting a whole block before multiplying
  // stops overlapping the weight reads with the tile math), 48 rows 1.0-1.09x, 64 rows 1.14-1.21x.
  std::unique_ptr<uint16_t[], void (*)(void*)> kept(nullptr, std::free);
  if (M > kMinKeptRows && K <= kMaxKeptK)
    kept.reset(static_cast<uint16_t*>(std::aligned_alloc(64, K / kK * kStreams * kTileWords * sizeof(uint16_t))));
  const int64_t part = (block_end - block_begin) / kStreams;  // the walk of small_m::over_block_groups
  for (int64_t i = 0; i < part; ++i) {
    int64_t blocks[kStreams];
    for (int j = 0; j < kStreams; ++j) blocks[j] = block_begin + j * part + i;
    block_group<kStreams>(kernel, blocks, x, M, K, b_tiles, kept.get(), c_tile);
  }
  for (int64_t b = block_begin + kStreams * part; b < block_end; ++b)
    block_group<1>(kernel, &b, x, M, K, b_tiles, kept.get(), c_tile);
  _tile_release();
}

#endif  // GPT_FAST_HAVE_X86

}  // namespace gpt_fast::amx
