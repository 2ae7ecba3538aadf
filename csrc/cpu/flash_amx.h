// The AMX engine of the CPU flash attention kernel (bf16 input, D a multiple of 32, x86-64 CPUs with AMX-BF16
// and AVX512-BF16, Linux): both matrix products of a 64 x 64 tile run as 16 x 16 x 32 TDPBF16PS tile products
// with fp32 accumulation; the online softmax between them is the kernel's common fp32 code.
//
//   S^T (keys x queries) = K Q^T:  A = 16 keys x 32 dims read in place from qkv; B = Q^T as bf16 pairs of
//                                   consecutive dims, which is the layout AMX wants (packed once per query block).
//   O^T (dims x queries) += V^T P^T: A = V^T (16 dims x 32 keys, transposed once per call for all blocks);
//                                   B = P^T as bf16 pairs of consecutive keys (repacked per key block).
//
// Elsewhere GPT_FAST_HAVE_AMX_ENGINE is undefined and the fp32 engine runs.
#pragma once

#include "cpu/flash_tiles.h"  // and cpu_isa.h: GPT_FAST_HAVE_X86; the engine runs when cpu_isa() is amx

#if GPT_FAST_HAVE_X86 && defined(__linux__)
#define GPT_FAST_HAVE_AMX_ENGINE 1

#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#define GPT_FAST_TARGET_AMX                                                                          \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c," \
                        "prefer-vector-width=512")))

namespace gpt_fast::flash {

// Tiles 0 (accumulator), 1 (A) and 2 (B): 16 rows of 64 bytes each.
GPT_FAST_TARGET_AMX inline void amx_load_tile_config() {
  struct alignas(64) {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {64, 64, 64};
    uint8_t rows[16] = {16, 16, 16};
  } config;
  _tile_loadconfig(&config);
}

// V^T of every (batch, head): vt (B*H, D, vt_len) from the value part of qkv, zero past T. Blocks of 16 keys
// keep the 16 source rows in L1 while each dim's 16 values are written contiguously.
inline void build_vt(const c10::BFloat16* v, int64_t v_sb, int64_t v_st, int64_t B, int64_t T, int64_t H, int64_t D,
                     c10::BFloat16* vt, int64_t vt_len) {
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const c10::BFloat16* src = v + (bh / H) * v_sb + (bh % H) * D;  // (T, D) with row stride v_st
      c10::BFloat16* dst = vt + bh * D * vt_len;                      // (D, vt_len)
      for (int64_t j0 = 0; j0 < T; j0 += 16) {
        const int64_t n = std::min<int64_t>(16, T - j0);
        for (int64_t d = 0; d < D; ++d)
          for (int64_t j = 0; j < n; ++j) dst[d * vt_len + j0 + j] = src[(j0 + j) * v_st + d];
      }
      for (int64_t d = 0; d < D; ++d) std::fill(dst + d * vt_len + T, dst + (d + 1) * vt_len, c10::BFloat16(0.f));
    }
  });
}

struct AmxEngine {
  using Elem = c10::BFloat16;
  static constexpr int64_t kRowBytes = kBlockQ * 4;  // row stride of the st, ot and p2 tiles

  // Q^T as pairs: qt[dp][i] = (q[i][2dp], q[i][2dp + 1]); rows past nq are zero.
  template <typename T>
  GPT_FAST_INLINE static void load_q(const Params& p, Tiles& t, const T* q, int64_t nq) {
    auto* qt = reinterpret_cast<uint32_t*>(&t.qt[0][0]);
    for (int64_t i = 0; i < kBlockQ; ++i) {  // row by row: contiguous reads
      for (int64_t dp = 0; dp < p.D / 2; ++dp) {
        if (i < nq) std::memcpy(qt + dp * kBlockQ + i, q + i * p.q_st + 2 * dp, 4);
        else qt[dp * kBlockQ + i] = 0;
      }
    }
  }

  GPT_FAST_TARGET_AMX static void scores(const Params& p, Tiles& t, const c10::BFloat16* k, int64_t nk) {
    const auto* qt = reinterpret_cast<const uint32_t*>(&t.qt[0][0]);
    for (int64_t kk = 0; kk < nk; kk += 16) {
      const c10::BFloat16* a = k + kk * p.kv_st;
      int64_t a_stride = p.kv_st * 2;
      if (nk - kk < 16) {  // a partial group of keys: copy it so that no row past the block is read
        for (int64_t r = 0; r < 16; ++r) {
          if (kk + r < nk) std::memcpy(t.kpad[r], a + r * p.kv_st, p.D * 2);
          else std::memset(t.kpad[r], 0, p.D * 2);
        }
        a = &t.kpad[0][0];
        a_stride = kMaxHead * 2;
      }
      for (int v = 0; v < kVecQ; ++v) {
        _tile_zero(0);
        for (int64_t step = 0; step < p.D / 32; ++step) {
          _tile_loadd(1, a + step * 32, a_stride);
          _tile_loadd(2, qt + step * 16 * kBlockQ + v * kLanes, kRowBytes);
          _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, &t.st[kk][v * kLanes], kRowBytes);
      }
    }
    const __m512 scale = _mm512_set1_ps(p.scale);
    for (int64_t j = 0; j < nk; ++j)
      for (int v = 0; v < kVecQ; ++v)
        _mm512_store_ps(&t.st[j][v * kLanes], _mm512_mul_ps(_mm512_load_ps(&t.st[j][v * kLanes]), scale));
  }

  GPT_FAST_TARGET_AMX static void pv(const Params& p, Tiles& t, const c10::BFloat16* /*v*/, int64_t nk, int64_t bh,
                                     int64_t j0) {
    const int64_t steps = (nk + 31) / 32;  // 32 keys per tile product; keys past nk get probability 0
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int64_t jp = 0; jp < steps * 16; ++jp) {  // lane i of p2[jp] = (P[2jp][i], P[2jp+1][i]) in bf16
      for (int v = 0; v < kVecQ; ++v) {
        const __m512 a = 2 * jp < nk ? _mm512_load_ps(&t.st[2 * jp][v * kLanes]) : _mm512_setzero_ps();
        const __m512 b = 2 * jp + 1 < nk ? _mm512_load_ps(&t.st[2 * jp + 1][v * kLanes]) : _mm512_setzero_ps();
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // a0..a15, b0..b15
        _mm512_store_si512(&t.p2[jp][v * kLanes], _mm512_permutexvar_epi16(interleave, both));
      }
    }
    const c10::BFloat16* vt = p.vt + bh * p.D * p.vt_len + j0;  // V^T rows of this (batch, head), from key j0
    for (int64_t d0 = 0; d0 < p.D; d0 += 16) {
      for (int v = 0; v < kVecQ; ++v) {
        _tile_loadd(0, &t.ot[d0][v * kLanes], kRowBytes);
        for (int64_t step = 0; step < steps; ++step) {
          _tile_loadd(1, vt + d0 * p.vt_len + step * 32, p.vt_len * 2);
          _tile_loadd(2, &t.p2[step * 16][v * kLanes], kRowBytes);
          _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, &t.ot[d0][v * kLanes], kRowBytes);
      }
    }
  }
};

}  // namespace gpt_fast::flash
#endif
