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
// Non-finite values as PyTorch's math: a NaN or inf in a query or an attended key makes that (token, head) NaN
// (unless its scores are -inf for some keys only: those keys get weight 0), a NaN or inf in a value reaches the
// output through P V.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "checks.h"
#include "cpu/attention_math.h"
#include "cpu/decode_kernel.h"

namespace gpt_fast {
namespace {
using namespace attention;
using namespace decode;

constexpr int64_t kMinChunk = 128;  // fewest keys worth a separate split-K task

// Whether the cache rows are prefetched into L2 only: on AMD Zen 4's AVX-512 tier, for 16-bit caches with at most
// 256 keys in a task, where 12 layers of bf16 decode attention measured (2 threads, caches from memory, one process
// alternating, 2026-12-07) 1.36x / 1.33x / 1.38x faster so at B x keys = 8 x 128 / 16 x 64 / 4 x 256, 1.12x at
// 8 x 200, 1.07x at 8 x 256, but 1.02x at 8 x 384 and 0.94-0.98x at 8 x 480 (longer streams, which the hardware
// prefetcher has ramped up on); fp32 caches within noise (1.03x at 8 x 128). Elsewhere into L1, as designed.
bool prefetch_cache_to_l2(cpu::Isa isa, const at::Tensor& cache, int64_t chunk) {
  return cpu::amd_zen4() && isa >= cpu::Isa::kAvx512 && cache.element_size() == 2 && chunk <= 256;
}

// The decode tasks for attention::run_tasks_best (AVX-512, AVX2 in decode_attention_avx2.cpp, portable).
template <typename T>
struct DecodeTasks {
  static GPT_FAST_INLINE void run(const Params& p, int64_t begin, int64_t end) { run_tasks<T>(p, begin, end); }
#if GPT_FAST_HAVE_X86
  static void run_avx2(const Params& p, int64_t begin, int64_t end) { decode::run_tasks_avx2<T>(p, begin, end); }
#endif
};

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
  const float inv = 1.f / sum;  // every token attends at least itself: sum is 0 only when all its scores are -inf
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
  auto out = qkv.new_empty({B, S, C});
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
  if (splits > 1) partial = qkv.new_empty({B, n_head, splits, S, D + 2}, at::kFloat);
  const cpu::Isa isa = cpu::cpu_isa();
  Params p{B, S, n_head, D, C, qkv.const_data_ptr(), qkv.stride(0), qkv.stride(1), k_cache.const_data_ptr(),
           v_cache.const_data_ptr(), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), len, splits, chunk,
           splits > 1 ? partial.mutable_data_ptr<float>() : nullptr, out.mutable_data_ptr(),
           kLog2e / std::sqrt(static_cast<float>(D)), prefetch_cache_to_l2(isa, k_cache, chunk)};
  const int64_t tasks = B * n_head * splits;
  // Small problems run on the calling thread: a task below ~16k multiply-adds is not worth a thread wake-up.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, chunk * D * S));
  with_storage_type(qkv.scalar_type(), [&](auto type) {
    using T = decltype(type);
    at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
      run_tasks_best<DecodeTasks<T>>(isa, p, begin, end);
    });
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
