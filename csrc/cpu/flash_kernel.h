// The body of the CPU flash attention kernel (see flash_attention.cpp for the algorithm): fp32 micro-kernels of
// the two tile products, the masks and online softmax of a key block, a query block, a range of tasks.
// Header-only and always inlined, so that each translation unit compiles it for its lane count
// (attention_math.h): flash_attention.cpp for AVX-512 and portable code (16 lanes), flash_attention_avx2.cpp for
// AVX2 + FMA (8 lanes). The fp32 micro-kernels' tile, kMicro keys (or dims) x kBlockQ queries, is sized for
// AVX-512's 32 registers; on AVX2 (16 ymm registers) they take 6 keys (dims) x kBlockQ / 4 queries at a time.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "cpu/attention_math.h"
#include "cpu/dropout_mask.h"
#include "cpu/flash_tiles.h"

namespace gpt_fast::flash {
inline namespace GPT_FAST_ATTENTION_NS {

// Micro-kernel tile: kMicroN keys (QK^T) or head dims (PV) by kMicroV query vectors. 16 lanes: 6 x 4 zmm
// accumulators of AVX-512's 32 registers; 8 lanes: 6 x 2 of AVX2's 16 ymm (plus 2 query or probability vectors
// and 1 broadcast), the block's 8 query vectors in four passes: per d (or key) 8 loads feed 12 FMAs in 12
// independent chains. The earlier 2 x 4 tile (6 loads, 8 FMAs, 8 chains: just the FMA latency x throughput of
// Zen 5) ran the fp32 kernel 1.25-1.3x slower (GPT-1 shape, T = 512, one core, Zen 5 capped to AVX2).
constexpr int kMicroN = kLanes == 16 ? kMicro : 6;
constexpr int kMicroV = kLanes == 16 ? kVecQ : 2;
static_assert(kVecQ % kMicroV == 0);

// S^T[j][:] = sum_d K[j][d] * Q^T[d][:] for NJ keys.
template <int NJ>
GPT_FAST_INLINE void qk_micro(const Tiles& t, const float* k, int64_t k_stride, int64_t D, float* st) {
  for (int v0 = 0; v0 < kVecQ; v0 += kMicroV) {
    VF acc[NJ][kMicroV] = {};
    for (int64_t d = 0; d < D; ++d) {
      VF q[kMicroV];
      for (int v = 0; v < kMicroV; ++v) q[v] = load(&t.qt[d][(v0 + v) * kLanes]);
      for (int j = 0; j < NJ; ++j) {
        const float kb = k[j * k_stride + d];
        for (int v = 0; v < kMicroV; ++v) acc[j][v] += q[v] * kb;
      }
    }
    for (int j = 0; j < NJ; ++j)
      for (int v = 0; v < kMicroV; ++v) store(st + j * kBlockQ + (v0 + v) * kLanes, acc[j][v]);
  }
}

// O^T[d][:] += sum_j V[j][d] * P^T[j][:] for ND head dims.
template <int ND>
GPT_FAST_INLINE void pv_micro(Tiles& t, const float* v, int64_t v_stride, int64_t d0, int64_t nk) {
  for (int q0 = 0; q0 < kVecQ; q0 += kMicroV) {
    VF acc[ND][kMicroV];
    for (int d = 0; d < ND; ++d)
      for (int q = 0; q < kMicroV; ++q) acc[d][q] = load(&t.ot[d0 + d][(q0 + q) * kLanes]);
    for (int64_t j = 0; j < nk; ++j) {
      VF p[kMicroV];
      for (int q = 0; q < kMicroV; ++q) p[q] = load(&t.st[j][(q0 + q) * kLanes]);
      for (int d = 0; d < ND; ++d) {
        const float vb = v[j * v_stride + d0 + d];
        for (int q = 0; q < kMicroV; ++q) acc[d][q] += p[q] * vb;
      }
    }
    for (int d = 0; d < ND; ++d)
      for (int q = 0; q < kMicroV; ++q) store(&t.ot[d0 + d][(q0 + q) * kLanes], acc[d][q]);
  }
}

// Runs F<min(n, N)> (n >= 1); the tails of the micro-kernel loops.
template <template <int> class F, int N, typename... Args>
GPT_FAST_INLINE void with_width(int n, Args&&... args) {
  if constexpr (N == 1) {
    F<1>::run(args...);
  } else {
    if (n >= N) F<N>::run(args...);
    else with_width<F, N - 1>(n, args...);
  }
}
template <int N>
struct QK {
  GPT_FAST_INLINE static void run(const Tiles& t, const float* k, int64_t s, int64_t D, float* st) {
    qk_micro<N>(t, k, s, D, st);
  }
};
template <int N>
struct PV {
  GPT_FAST_INLINE static void run(Tiles& t, const float* v, int64_t s, int64_t d0, int64_t nk) {
    pv_micro<N>(t, v, s, d0, nk);
  }
};

// The fp32 engine: keys and values in fp32 (converted once when the input is not), Q^T pre-scaled.
struct Fp32Engine {
  using Elem = float;
  template <typename T>
  GPT_FAST_INLINE static void load_q(const Params& p, Tiles& t, const T* q, int64_t nq) {
    for (int64_t i = 0; i < kBlockQ; ++i)  // row by row: contiguous reads
      for (int64_t d = 0; d < p.D; ++d) t.qt[d][i] = i < nq ? static_cast<float>(q[i * p.q_st + d]) * p.scale : 0.f;
  }
  GPT_FAST_INLINE static void scores(const Params& p, Tiles& t, const float* k, int64_t nk) {
    for (int64_t j = 0; j < nk; j += kMicroN)
      with_width<QK, kMicroN>(static_cast<int>(nk - j), t, k + j * p.kv_st, p.kv_st, p.D, &t.st[j][0]);
  }
  GPT_FAST_INLINE static void pv(const Params& p, Tiles& t, const float* v, int64_t nk, int64_t /*bh*/,
                                 int64_t /*j0*/) {
    for (int64_t d = 0; d < p.D; d += kMicroN)
      with_width<PV, kMicroN>(static_cast<int>(p.D - d), t, v, p.kv_st, d, nk);
  }
};

// Dropout on the tile's probabilities P^T[j][i] (query i0 + i, key j0 + j): an element is zeroed unless its Philox
// bits pass the threshold (the 1 / (1 - p) scale is applied with the row's 1 / sum at the end).
GPT_FAST_INLINE void drop_tile(const Params& p, Tiles& t, int64_t b, int64_t h, int64_t i0, int64_t j0, int64_t nk) {
  const int64_t nq = std::min<int64_t>(kBlockQ, p.T - i0);
  const cpu::Dropout drop{p.seed, p.threshold, p.keep_scale};
  uint64_t bits[cpu::keep_words(kBlockK)];
  for (int64_t i = 0; i < nq; ++i) {
    const uint64_t n0 = static_cast<uint64_t>(((b * p.H + h) * p.T + i0 + i) * p.T + j0);
    cpu::keep_bits_best(p.isa, drop, n0, nk, bits);
    for (int64_t j = 0; j < nk; ++j)
      if (!cpu::keep_bit(bits, static_cast<int64_t>(n0 & 3) + j)) t.st[j][i] = 0.f;
  }
}

// One key block [j0, j1) for the query block starting at i0 (nq valid rows): scores, masks, online softmax, P V.
template <typename Engine>
GPT_FAST_INLINE void key_block(const Params& p, Tiles& t, int64_t b, int64_t h, int64_t i0, int64_t j0, int64_t j1) {
  using E = typename Engine::Elem;
  const int64_t nk = j1 - j0;
  const int64_t at = b * p.kv_sb + j0 * p.kv_st + h * p.D;
  Engine::scores(p, t, static_cast<const E*>(p.k) + at, nk);

  // Masks: key j is hidden from query i when j > i (causal) or when the key is padding.
  const bool* mask = p.mask ? p.mask + b * p.T + j0 : nullptr;
  const bool diagonal = j1 - 1 > i0;
  for (int64_t j = 0; j < nk; ++j) {
    if (mask && !mask[j]) {
      for (int q = 0; q < kVecQ; ++q) store(&t.st[j][q * kLanes], splat(kNegInf));
    } else if (diagonal) {
      for (int64_t i = 0; i < std::min<int64_t>(kBlockQ, j0 + j - i0); ++i) t.st[j][i] = kNegInf;  // i < key
    }
  }

  // Online softmax, lane-wise over query rows.
  VF alpha[kVecQ];
  for (int q = 0; q < kVecQ; ++q) {
    VF mx = t.m[q];
    for (int64_t j = 0; j < nk; ++j) mx = vmax(mx, load(&t.st[j][q * kLanes]));
    const VF base = mx == kNegInf ? VF{} : mx;  // rows with nothing to attend yet: keep everything at 0
    alpha[q] = exp2_nonpositive(t.m[q] - base);
    VF sum{};
    for (int64_t j = 0; j < nk; ++j) {
      const VF e = exp2_nonpositive(load(&t.st[j][q * kLanes]) - base);
      store(&t.st[j][q * kLanes], e);
      sum += e;
    }
    t.l[q] = t.l[q] * alpha[q] + sum;
    t.m[q] = mx;
  }
  for (int64_t d = 0; d < p.D; ++d)
    for (int q = 0; q < kVecQ; ++q) store(&t.ot[d][q * kLanes], load(&t.ot[d][q * kLanes]) * alpha[q]);
  if (p.threshold != 0) drop_tile(p, t, b, h, i0, j0, nk);  // after the sums: they normalise undropped P
  Engine::pv(p, t, static_cast<const E*>(p.v) + at, nk, b * p.H + h, j0);
}

template <typename Engine, typename T>
GPT_FAST_INLINE void query_block(const Params& p, Tiles& t, int64_t b, int64_t h, int64_t i0) {
  const int64_t nq = std::min<int64_t>(kBlockQ, p.T - i0);
  Engine::load_q(p, t, static_cast<const T*>(p.q) + b * p.q_sb + i0 * p.q_st + h * p.D, nq);
  for (int64_t d = 0; d < p.D; ++d)
    for (int q = 0; q < kVecQ; ++q) store(&t.ot[d][q * kLanes], VF{});
  for (int q = 0; q < kVecQ; ++q) t.m[q] = splat(kNegInf), t.l[q] = VF{};

  const int64_t key_end = i0 + nq;  // causal: the block's last row sees keys [0, i0 + nq)
  for (int64_t j0 = 0; j0 < key_end; j0 += kBlockK) key_block<Engine>(p, t, b, h, i0, j0, std::min(key_end, j0 + kBlockK));

  T* out = static_cast<T*>(p.out) + (b * p.T + i0) * p.H * p.D + h * p.D;
  float inv[kBlockQ];  // 1 / row sum (times the dropout scale); 0 for rows that attend to nothing
  for (int64_t i = 0; i < nq; ++i) {
    const float l = t.l[i / kLanes][i % kLanes];
    inv[i] = l > 0.f ? p.keep_scale / l : 0.f;
  }
  if (p.lse) {  // the row's log-sum-exp in base 2: max + log2(sum), both in the kernel's base-2 units
    float* lse = p.lse + (b * p.H + h) * p.T + i0;
    for (int64_t i = 0; i < nq; ++i) {
      const float l = t.l[i / kLanes][i % kLanes], m = t.m[i / kLanes][i % kLanes];
      lse[i] = l > 0.f ? m + std::log2(l) : (l == 0.f ? kNegInf : l);  // l NaN: NaN
    }
  }
  for (int64_t i = 0; i < nq; ++i) {  // O^T column i -> output row i
    alignas(64) float row[kMaxHead];
    for (int64_t d = 0; d < p.D; ++d) row[d] = t.ot[d][i] * inv[i];
    float_to_row(row, out + i * p.H * p.D, p.D);
  }
}

// Task k -> (query block, batch, head). Query blocks are ordered 0, n-1, 1, n-2, ... so that any contiguous
// range of tasks (what parallel_for hands a thread) has a balanced share of the causal triangle.
template <typename Engine, typename T>
GPT_FAST_INLINE void run_tasks_with(const Params& p, int64_t begin, int64_t end) {
  auto tiles = std::make_unique<Tiles>();
  const int64_t n_qb = (p.T + kBlockQ - 1) / kBlockQ;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t z = k / (p.B * p.H), bh = k % (p.B * p.H);
    const int64_t qb = z % 2 == 0 ? z / 2 : n_qb - 1 - z / 2;
    query_block<Engine, T>(p, *tiles, bh / p.H, bh % p.H, qb * kBlockQ);
  }
}

template <typename T>
GPT_FAST_INLINE void run_tasks(const Params& p, int64_t begin, int64_t end) {
  run_tasks_with<Fp32Engine, T>(p, begin, end);
}

}  // inline namespace GPT_FAST_ATTENTION_NS
}  // namespace gpt_fast::flash
