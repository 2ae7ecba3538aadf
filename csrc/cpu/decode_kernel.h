// The body of the CPU decode attention kernel (see decode_attention.cpp for the algorithm): per (batch, head, key
// chunk) task, the scores of a chunk as dot products over D, exp2 softmax statistics, and P V with the
// probabilities broadcast over value rows. Header-only and always inlined, so that each translation unit compiles
// it for its lane count (attention_math.h): decode_attention.cpp for AVX-512 and portable code (16 lanes),
// decode_attention_avx2.cpp for AVX2 + FMA (8 lanes).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/attention_math.h"

namespace gpt_fast::decode {

constexpr int64_t kMaxHead = 128;

struct Params {
  int64_t B, S, H, D, C;
  const void* qkv;  // element (b, s, part, h, d) at qkv + b*q_sb + s*q_ss + part*C + h*D + d
  int64_t q_sb, q_ss;
  const void* k;    // cache element (b, h, t, d) at k + b*c_sb + h*c_sh + t*c_st + d (same strides for v)
  const void* v;
  int64_t c_sb, c_sh, c_st;
  const int64_t* lengths;
  int64_t splits, chunk;  // key chunks per (b, h) and keys per chunk
  float* partial;         // (B, H, splits, S, D + 2): output, then max and sum, of each chunk; fp32
  void* out;              // (B, S, C) contiguous, written when splits == 1
  float scale;            // log2(e) / sqrt(D)
  bool prefetch_to_l2;    // cache rows prefetched into L2 only (prefetch_row), else into L1
};

#if GPT_FAST_HAVE_X86
// Tasks [begin, end) compiled for AVX2 + FMA with 8 lanes (decode_attention_avx2.cpp), for T = float,
// c10::BFloat16, c10::Half.
template <typename T>
GPT_FAST_TARGET_AVX2 void run_tasks_avx2(const Params& p, int64_t begin, int64_t end);
#endif

inline namespace GPT_FAST_ATTENTION_NS {
using namespace attention;

// The query of one token, scaled: NP groups of 2 kLanes values in T's pair order (see load_pair), then the rest
// (D - 2 kLanes NP values, fewer than 2 kLanes) in natural order.
template <int NP>
struct Query {
  VF a[NP > 0 ? NP : 1], b[NP > 0 ? NP : 1];
  alignas(64) float rest[2 * kLanes];
};

// Dot product of the query with one key row, as a 16-lane partial sum (the scalar tail goes to `tail`).
template <int NP, typename T>
GPT_FAST_INLINE VF key_dot(const Query<NP>& q, const T* k, int64_t D, float& tail) {
  VF acc{};
  for (int p = 0; p < NP; ++p) {
    VF ka, kb;
    load_pair(k + p * 2 * kLanes, ka, kb);
    acc += q.a[p] * ka + q.b[p] * kb;
  }
  int64_t d = NP * 2 * kLanes;
  if (d + kLanes <= D) acc += load(q.rest) * load_float(k + d), d += kLanes;
  tail = 0.f;
  for (; d < D; ++d) tail += q.rest[d - NP * 2 * kLanes] * static_cast<float>(k[d]);
  return acc;
}

// Asks for the cache row `row` (D values of T) ahead of its use: the rows of one (b, h) are a short stream (a few
// KiB to tens of KiB) that the hardware prefetcher has barely ramped up on before it ends. Keys 2 kLanes rows ahead
// and each value row while its key is scored: 16 rows x 150 cached positions x 12 layers (bf16, Sapphire Rapids, 2
// threads) 5.5-5.6 -> 3.4-4.3 ms, 16 -> 21-26 GB/s. to_l2: into L2 only (decode_attention.cpp says when).
template <typename T>
GPT_FAST_INLINE void prefetch_row(const T* row, int64_t D, bool to_l2) {
  const char* bytes = reinterpret_cast<const char*>(row);
  const int64_t n = D * static_cast<int64_t>(sizeof(T));
  if (to_l2) {
    for (int64_t at = 0; at < n; at += 64) __builtin_prefetch(bytes + at, 0, 2);
  } else {
    for (int64_t at = 0; at < n; at += 64) __builtin_prefetch(bytes + at);
  }
}
constexpr int64_t kPrefetchRows = 2 * kLanes;  // how far ahead, in keys / values

// scores[j] = q . k_j for keys j in [0, n) (row stride ks); the value rows v_j are prefetched alongside, for P V.
template <int NP, typename T>
GPT_FAST_INLINE void chunk_scores(const Query<NP>& q, const T* k, const T* v, int64_t ks, int64_t n, int64_t D,
                                  bool to_l2, float* scores) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {  // kLanes keys at a time, summed horizontally together
    VF part[kLanes];
    alignas(64) float tails[kLanes];
    for (int r = 0; r < kLanes; ++r) {
      if (j + kPrefetchRows + r < n) prefetch_row(k + (j + kPrefetchRows + r) * ks, D, to_l2);
      prefetch_row(v + (j + r) * ks, D, to_l2);
      part[r] = key_dot(q, k + (j + r) * ks, D, tails[r]);
    }
    store(scores + j, reduce_add_lanes(part) + load(tails));
  }
  for (; j < n; ++j) {
    float tail;
    scores[j] = reduce_add(key_dot(q, k + j * ks, D, tail)) + tail;
  }
}

// acc[0:D] = sum_j probs[j] * v_j for keys j in [0, n), in natural order.
template <int NP, typename T>
GPT_FAST_INLINE void chunk_pv(const float* probs, const T* v, int64_t vs, int64_t n, int64_t D, float* acc) {
  constexpr int N = NP > 0 ? NP : 1;
  VF a0[N] = {}, b0[N] = {}, a1[N] = {}, b1[N] = {};  // even and odd keys: two dependency chains
  int64_t j = 0;
  // 16 lanes: 4 NP <= 16 zmm accumulators; 8 lanes (NP up to 8 for D = 128, AVX2's 16 ymm): one chain.
  constexpr bool kTwoChains = kLanes == 16;
  for (; kTwoChains && j + 2 <= n; j += 2) {
    for (int p = 0; p < NP; ++p) {
      VF va, vb, wa, wb;
      load_pair(v + j * vs + p * 2 * kLanes, va, vb);
      load_pair(v + (j + 1) * vs + p * 2 * kLanes, wa, wb);
      a0[p] += va * probs[j], b0[p] += vb * probs[j];
      a1[p] += wa * probs[j + 1], b1[p] += wb * probs[j + 1];
    }
  }
  for (; j < n; ++j) {
    for (int p = 0; p < NP; ++p) {
      VF va, vb;
      load_pair(v + j * vs + p * 2 * kLanes, va, vb);
      a0[p] += va * probs[j], b0[p] += vb * probs[j];
    }
  }
  for (int p = 0; p < NP; ++p) unpair<T>(a0[p] + a1[p], b0[p] + b1[p], acc + p * 2 * kLanes);
  int64_t d = NP * 2 * kLanes;
  if (d + kLanes <= D) {
    VF r{};
    for (j = 0; j < n; ++j) r += load_float(v + j * vs + d) * probs[j];
    store(acc + d, r);
    d += kLanes;
  }
  for (; d < D; ++d) {
    float s = 0.f;
    for (j = 0; j < n; ++j) s += probs[j] * static_cast<float>(v[j * vs + d]);
    acc[d] = s;
  }
}

// One task: row b, head h, keys [k0, k1) for every new token; writes (output, max, sum) per token, or the
// normalised output when the chunk is the whole row.
template <int NP, typename T>
GPT_FAST_INLINE void chunk_task(const Params& p, int64_t b, int64_t h, int64_t split, std::vector<float>& scores) {
  const int64_t len = p.lengths[b], D = p.D;
  const int64_t k0 = split * p.chunk, k1 = std::min(k0 + p.chunk, len + p.S);
  const T* kc = static_cast<const T*>(p.k) + b * p.c_sb + h * p.c_sh + k0 * p.c_st;
  const T* vc = static_cast<const T*>(p.v) + b * p.c_sb + h * p.c_sh + k0 * p.c_st;
  scores.resize(std::max<int64_t>(0, k1 - k0) + kLanes);
  Query<NP> q;
  alignas(64) float acc[kMaxHead + 2 * kLanes];  // slack: the compiler cannot see that D <= kMaxHead
  for (int64_t i = 0; i < p.S; ++i) {
    const T* qi = static_cast<const T*>(p.qkv) + b * p.q_sb + i * p.q_ss + h * D;
    for (int g = 0; g < NP; ++g) {
      load_pair(qi + g * 2 * kLanes, q.a[g], q.b[g]);
      q.a[g] *= p.scale, q.b[g] *= p.scale;
    }
    for (int64_t d = NP * 2 * kLanes; d < D; ++d) q.rest[d - NP * 2 * kLanes] = static_cast<float>(qi[d]) * p.scale;
    const int64_t n = std::min(k1, len + i + 1) - k0;  // keys of this chunk token i may see
    float mx = kNegInf, sum = 0.f;
    std::fill(acc, acc + D, 0.f);
    if (n > 0) {
      chunk_scores<NP>(q, kc, vc, p.c_st, n, D, p.prefetch_to_l2, scores.data());
      for (int64_t j = n; j < n + kLanes; ++j) scores[j] = kNegInf;  // pad so the vector loops need no tail
      VF mxv = splat(kNegInf);
      for (int64_t j = 0; j < n; j += kLanes) mxv = vmax(mxv, load(&scores[j]));
      mx = reduce_max(mxv);
      // Every score -inf (an infinite query or key): weights 0 and sum 0 here, NaN once normalised, as PyTorch's
      // softmax gives; a NaN or +inf score makes the sum NaN through exp2 (NaN - mx, inf - inf).
      const float base = mx == kNegInf ? 0.f : mx;
      VF sums{};
      for (int64_t j = 0; j < n; j += kLanes) {
        const VF e = exp2_nonpositive(load(&scores[j]) - base);
        store(&scores[j], e);
        sums += e;
      }
      sum = reduce_add(sums);
      chunk_pv<NP>(scores.data(), vc, p.c_st, n, D, acc);
    }
    if (p.splits == 1) {
      const float inv = 1.f / sum;  // sum >= 1 (the top score gives 2^0), or 0 when every score is -inf: NaN
      for (int64_t d = 0; d < D; ++d) acc[d] *= inv;
      float_to_row(acc, static_cast<T*>(p.out) + (b * p.S + i) * p.C + h * D, D);
    } else {
      float* part = p.partial + (((b * p.H + h) * p.splits + split) * p.S + i) * (D + 2);
      std::copy(acc, acc + D, part);
      part[D] = mx;
      part[D + 1] = sum;
    }
  }
}

template <int NP, typename T>
GPT_FAST_INLINE void run_tasks_np(const Params& p, int64_t begin, int64_t end) {
  std::vector<float> scores;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t split = t % p.splits, bh = t / p.splits;
    chunk_task<NP, T>(p, bh / p.H, bh % p.H, split, scores);
  }
}

// The number of 2 kLanes-value groups of the head (D / (2 kLanes), 0..kMaxNP) as a template argument, so that the
// accumulators live in registers.
constexpr int kMaxNP = kMaxHead / (2 * kLanes);

template <typename T, int NP = 0>
GPT_FAST_INLINE void run_tasks(const Params& p, int64_t begin, int64_t end) {
  if constexpr (NP == kMaxNP) {
    run_tasks_np<NP, T>(p, begin, end);
  } else {
    if (p.D / (2 * kLanes) == NP) run_tasks_np<NP, T>(p, begin, end);
    else run_tasks<T, NP + 1>(p, begin, end);
  }
}

}  // inline namespace GPT_FAST_ATTENTION_NS
}  // namespace gpt_fast::decode
