// CPU kernel for gpt_fast::decode_attention: attention of S new tokens per row over a KV cache.
//
//   qkv (B, S, 3C) = q | k | v of the new tokens, read in place as (B, S, H, D);
//   k_cache, v_cache (B, H, Tmax, D): the new keys/values are written at [len_b, len_b + S) of row b;
//   cache_lengths (B,) int64 = len_b, tokens already cached;
//   out (B, S, C): new token i of row b attends causally to cache positions [0, len_b + i].
//
// Tasks are (batch, head, key chunk): when batch x heads is too little work for the threads, the cached length
// is split into chunks (split-K); each task keeps fp32 partial softmax statistics (max, sum) and a partial
// output per query, and a final pass merges the chunks. Scores of a chunk are formed as dot products over D,
// then exponentiated 16 at a time; P V accumulates with the probabilities broadcast over value rows.
//
// Limits: fp32, bf16, fp16 (caches in qkv's dtype); D <= 128; any S, Tmax; tensors need stride 1 in their
// last dim, other strides are free. len_b < 0 or len_b + S > Tmax is an IndexError (checked before any write).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "checks.h"
#include "cpu/attention_math.h"

namespace gpt_fast {
namespace {
using namespace attention;

constexpr int64_t kMaxHead = 128;
constexpr int64_t kMinChunk = 128;  // fewest keys worth a separate split-K task

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
};

// The query of one token, scaled: NP groups of 32 values in T's pair order (see load_pair), then the rest
// (D - 32 NP values) in natural order.
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

// scores[j] = q . k_j for keys j in [0, n) (row stride ks).
template <int NP, typename T>
GPT_FAST_INLINE void chunk_scores(const Query<NP>& q, const T* k, int64_t ks, int64_t n, int64_t D, float* scores) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {  // 16 keys at a time, summed horizontally together
    VF part[kLanes];
    alignas(64) float tails[kLanes];
    for (int r = 0; r < kLanes; ++r) part[r] = key_dot(q, k + (j + r) * ks, D, tails[r]);
    store(scores + j, reduce_add_16(part) + load(tails));
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
  for (; j + 2 <= n; j += 2) {
    for (int p = 0; p < NP; ++p) {
      VF va, vb, wa, wb;
      load_pair(v + j * vs + p * 2 * kLanes, va, vb);
      load_pair(v + (j + 1) * vs + p * 2 * kLanes, wa, wb);
      a0[p] += va * probs[j], b0[p] += vb * probs[j];
      a1[p] += wa * probs[j + 1], b1[p] += wb * probs[j + 1];
    }
  }
  if (j < n) {
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
      chunk_scores<NP>(q, kc, p.c_st, n, D, scores.data());
      for (int64_t j = n; j < n + kLanes; ++j) scores[j] = kNegInf;  // pad so the vector loops need no tail
      VF mxv = splat(kNegInf);
      for (int64_t j = 0; j < n; j += kLanes) mxv = vmax(mxv, load(&scores[j]));
      mx = reduce_max(mxv);
      VF sums{};
      for (int64_t j = 0; j < n; j += kLanes) {
        const VF e = exp2_nonpositive(load(&scores[j]) - mx);
        store(&scores[j], e);
        sums += e;
      }
      sum = reduce_add(sums);
      chunk_pv<NP>(scores.data(), vc, p.c_st, n, D, acc);
    }
    if (p.splits == 1) {
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
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

// The number of 32-value groups of the head (D / 32, 0..4) as a template argument, so that the
// accumulators live in registers.
template <typename T>
GPT_FAST_INLINE void run_tasks(const Params& p, int64_t begin, int64_t end) {
  switch (p.D / (2 * kLanes)) {
    case 0: run_tasks_np<0, T>(p, begin, end); break;
    case 1: run_tasks_np<1, T>(p, begin, end); break;
    case 2: run_tasks_np<2, T>(p, begin, end); break;
    case 3: run_tasks_np<3, T>(p, begin, end); break;
    default: run_tasks_np<4, T>(p, begin, end); break;
  }
}

GPT_FAST_MULTIVERSION(run_tasks_best, run_tasks)

// Merges the chunks of (b, h, token i): out = sum_c acc_c 2^(m_c - m) / sum_c l_c 2^(m_c - m), m = max_c m_c.
template <typename T>
void merge_chunks(const Params& p, int64_t b, int64_t h, int64_t i) {
  const int64_t D = p.D, row = D + 2;
  const float* part = p.partial + ((b * p.H + h) * p.splits * p.S + i) * row;  // chunk c at part + c*S*row
  float mx = kNegInf;
  for (int64_t c = 0; c < p.splits; ++c) mx = std::max(mx, part[c * p.S * row + D]);
  float acc[kMaxHead] = {};
  float sum = 0.f;
  if (mx != kNegInf) {
    for (int64_t c = 0; c < p.splits; ++c) {
      const float* pc = part + c * p.S * row;
      const float w = std::exp2(pc[D] - mx);  // 0 for empty chunks (max -inf)
      sum += w * pc[D + 1];
      for (int64_t d = 0; d < D; ++d) acc[d] += w * pc[d];
    }
  }
  T* o = static_cast<T*>(p.out) + (b * p.S + i) * p.C + h * D;
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(acc[d] * inv);
}

void check_cache(const at::Tensor& cache, const at::Tensor& qkv, int64_t B, int64_t H, int64_t D, const char* op,
                 const char* name) {
  check_cache_shape(cache, qkv, B, H, D, op, name);
  check_last_dim_contiguous(cache, op, name);
}

at::Tensor decode_attention_cpu(const at::Tensor& qkv, at::Tensor& k_cache, at::Tensor& v_cache,
                                const at::Tensor& cache_lengths, int64_t n_head) {
  constexpr const char* op = "gpt_fast::decode_attention";
  const int64_t D = check_packed_qkv(qkv, n_head, op);
  check_last_dim_contiguous(qkv, op, "qkv");
  const int64_t B = qkv.size(0), S = qkv.size(1), C = checked_mul(n_head, D, op, "n_head * head_dim");
  TORCH_CHECK(D >= 1 && D <= kMaxHead, op, ": head size C / n_head = ", D, " must be in [1, ", kMaxHead, "]");
  check_cache(k_cache, qkv, B, n_head, D, op, "k_cache");
  check_cache(v_cache, qkv, B, n_head, D, op, "v_cache");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes() && v_cache.strides() == k_cache.strides(), op,
              ": v_cache must have k_cache's shape and strides, got ", v_cache.sizes(), " / ", v_cache.strides(),
              " vs ", k_cache.sizes(), " / ", k_cache.strides());
  check_cache_lengths(cache_lengths, qkv, B, op);
  const int64_t Tmax = k_cache.size(2);
  auto lengths = cache_lengths.contiguous();
  const int64_t* len = lengths.const_data_ptr<int64_t>();
  check_cache_range(len, B, S, Tmax, op);  // before any write; afterwards len[b] + S <= Tmax cannot overflow
  int64_t max_total = 0;
  for (int64_t b = 0; b < B; ++b) max_total = std::max(max_total, len[b] + S);
  auto out = at::empty({B, S, C}, qkv.options());
  if (out.numel() == 0) return out;

  // The new keys and values go in first (positions [len, len + S)), then every token attends over the cache.
  {
    const auto* src = static_cast<const char*>(qkv.const_data_ptr());
    auto* kdst = static_cast<char*>(k_cache.mutable_data_ptr());
    auto* vdst = static_cast<char*>(v_cache.mutable_data_ptr());
    const int64_t e = qkv.element_size(), row = D * e;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t h = 0; h < n_head; ++h) {
          const char* k_new = src + (b * qkv.stride(0) + i * qkv.stride(1) + C + h * D) * e;  // (b, i, C + h*D)
          const int64_t at = (b * k_cache.stride(0) + h * k_cache.stride(1) + (len[b] + i) * k_cache.stride(2)) * e;
          std::memcpy(kdst + at, k_new, row);
          std::memcpy(vdst + at, k_new + C * e, row);
        }
  }

  const int64_t threads = at::get_num_threads();
  int64_t splits = 1;
  if (B * n_head < 2 * threads) {  // too few (batch, head) tasks to fill the threads: split the keys too
    splits = std::max<int64_t>(1, std::min((2 * threads + B * n_head - 1) / (B * n_head), max_total / kMinChunk));
  }
  const int64_t chunk = (max_total + splits - 1) / splits;
  splits = (max_total + chunk - 1) / chunk;
  at::Tensor partial;
  if (splits > 1) partial = at::empty({B, n_head, splits, S, D + 2}, qkv.options().dtype(at::kFloat));
  Params p{B, S, n_head, D, C, qkv.const_data_ptr(), qkv.stride(0), qkv.stride(1), k_cache.const_data_ptr(),
           v_cache.const_data_ptr(), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), len, splits, chunk,
           splits > 1 ? partial.mutable_data_ptr<float>() : nullptr, out.mutable_data_ptr(),
           kLog2e / std::sqrt(static_cast<float>(D))};
  const int64_t tasks = B * n_head * splits;
  // Small problems run on the calling thread: a task below ~16k multiply-adds is not worth a thread wake-up.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, chunk * D * S));
  const cpu::Isa isa = cpu::cpu_isa();
  with_storage_type(qkv.scalar_type(), [&](auto type) {
    using T = decltype(type);
    at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) { run_tasks_best<T>(isa, p, begin, end); });
    if (splits > 1) {
      at::parallel_for(0, B * n_head * S, 16, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) merge_chunks<T>(p, r / (n_head * S), r / S % n_head, r % S);
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("decode_attention", &decode_attention_cpu); }

}  // namespace gpt_fast
