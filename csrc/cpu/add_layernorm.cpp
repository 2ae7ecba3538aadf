// CPU kernel for gpt_fast::add_layernorm: out = layer_norm(x + dropout(residual [+ bias])) * weight + ln_bias.
// Post-LN as in GPT-1. With dropout_p > 0 each row's keep bits are drawn first (csrc/cpu/dropout_mask.h: Philox
// under csrc/philox.h's contract, element n = row * C + col of residual) and the kept residual + bias are scaled by
// 1 / (1 - p); with p = 0 no bit is drawn and the sum is x + residual + bias. Each row is read from memory once:
// the sum goes to an fp32 row buffer (in L1) while its sum accumulates; the variance is then taken exactly around
// the mean from that buffer (no sum-of-squares cancellation) and the output written in a third pass over it. fp32
// statistics; inputs and output in fp32, bf16 or fp16; any row width. Non-contiguous inputs are copied first.
// AVX-512 (16 lanes) or AVX2 + FMA (8 lanes; weights converted to fp32 once per task on both) when the CPU has
// it, else a portable scalar loop; all three take the same corrected statistics (see kParts) and the same bits.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/dropout_mask.h"
#include "cpu/vec.h"
#include "cpu/vec_avx2.h"

namespace gpt_fast {
namespace {

// Statistics of every path: the mean m0 is a sum of kParts (or vector-lane) partial sums over the row; the second
// pass sums d = v - m0 and d^2 and corrects both, m = m0 + sum(d) / C and var = sum(d^2) / C - (m - m0)^2 (exact
// algebra; the correction is tiny, so no cancellation). The rounding error of m0's long sum, which dominates when
// the row has a large mean and a small spread, is thereby removed on every path alike.
constexpr int kParts = 8;

template <typename T>
void add_layernorm_scalar(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out, int64_t begin,
                          int64_t end, int64_t C, float eps, const cpu::Dropout* drop) {
  std::vector<float> sum(C);  // (C,) the row x + dropout(res + bias) in fp32
  std::vector<uint64_t> bits(drop ? cpu::keep_words(C) : 0);  // the row's keep bits
  const float scale = drop ? static_cast<float>(drop->scale) : 1.f;
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * C;
    const T* rr = res + r * C;
    const int64_t off = (r * C) & 3;  // bit of column 0
    if (drop) cpu::keep_bits_scalar(*drop, static_cast<uint64_t>(r * C), C, bits.data());
    float part[kParts] = {};
    for (int64_t c = 0; c < C; ++c) {
      float v;
      if (drop) {
        const float d = static_cast<float>(rr[c]) + (bias ? static_cast<float>(bias[c]) : 0.f);
        v = static_cast<float>(xr[c]) + (cpu::keep_bit(bits.data(), off + c) ? d * scale : 0.f);
      } else {
        v = static_cast<float>(xr[c]) + static_cast<float>(rr[c]);
        if (bias) v += static_cast<float>(bias[c]);
      }
      sum[c] = v;
      part[c % kParts] += v;
    }
    float total = 0.f;
    for (float p : part) total += p;
    const float mean0 = total / static_cast<float>(C);
    float dpart[kParts] = {}, sqpart[kParts] = {};
    for (int64_t c = 0; c < C; ++c) {
      const float d = sum[c] - mean0;
      dpart[c % kParts] += d;
      sqpart[c % kParts] += d * d;
    }
    float dsum = 0.f, sq = 0.f;
    for (int i = 0; i < kParts; ++i) dsum += dpart[i], sq += sqpart[i];
    const float shift = dsum / static_cast<float>(C);
    const float mean = mean0 + shift;
    const float var = std::max(0.f, sq / static_cast<float>(C) - shift * shift);
    const float rstd = 1.f / std::sqrt(var + eps);
    T* o = out + r * C;
    for (int64_t c = 0; c < C; ++c) {
      o[c] = static_cast<T>((sum[c] - mean) * rstd * static_cast<float>(w[c]) + static_cast<float>(b[c]));
    }
  }
}

#if GPT_FAST_HAVE_X86
template <typename T>
GPT_FAST_AVX512 void add_layernorm_avx512(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out,
                                          int64_t begin, int64_t end, int64_t C, float eps, const cpu::Dropout* drop) {
  using V = cpu::Vec16<T>;
  const int64_t padded = (C + 15) / 16 * 16;
  std::vector<float> buf(3 * padded, 0.f);  // row sum | fp32 weight | fp32 ln_bias, each (padded,)
  float *sum = buf.data(), *wf = sum + padded, *bf = wf + padded;
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = cpu::first_lanes(C - c);
    _mm512_storeu_ps(wf + c, V::load(w + c, m));
    _mm512_storeu_ps(bf + c, V::load(b + c, m));
  }
  std::vector<uint64_t> bits(drop ? cpu::keep_words(C) : 0);  // the row's keep bits
  const __m512 scale = _mm512_set1_ps(drop ? static_cast<float>(drop->scale) : 1.f);
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * C;
    const T* rr = res + r * C;
    const int64_t off = (r * C) & 3;  // bit of column 0
    if (drop) cpu::keep_bits_avx512(*drop, static_cast<uint64_t>(r * C), C, bits.data());
    __m512 total = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {  // lanes past C load as 0 and stay 0 in sum
      const __mmask16 m = cpu::first_lanes(C - c);
      __m512 v;
      if (drop) {
        __m512 d = V::load(rr + c, m);
        if (bias) d = _mm512_add_ps(d, V::load(bias + c, m));
        const auto keep = static_cast<__mmask16>(cpu::keep_bits(bits.data(), off + c, 16));
        v = _mm512_add_ps(V::load(xr + c, m), _mm512_maskz_mul_ps(keep, d, scale));
      } else {
        v = _mm512_add_ps(V::load(xr + c, m), V::load(rr + c, m));
        if (bias) v = _mm512_add_ps(v, V::load(bias + c, m));
      }
      _mm512_storeu_ps(sum + c, v);
      total = _mm512_add_ps(total, v);
    }
    const float mean0 = _mm512_reduce_add_ps(total) / static_cast<float>(C);
    const __m512 vmean0 = _mm512_set1_ps(mean0);
    __m512 dsum = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {
      const __m512 d = _mm512_maskz_sub_ps(cpu::first_lanes(C - c), _mm512_loadu_ps(sum + c), vmean0);
      dsum = _mm512_add_ps(dsum, d);
      sq = _mm512_fmadd_ps(d, d, sq);
    }
    const float shift = _mm512_reduce_add_ps(dsum) / static_cast<float>(C);
    const __m512 vmean = _mm512_set1_ps(mean0 + shift);
    const float var = std::max(0.f, _mm512_reduce_add_ps(sq) / static_cast<float>(C) - shift * shift);
    const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(var + eps));
    T* o = out + r * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = cpu::first_lanes(C - c);
      const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(sum + c), vmean), rstd);
      V::store(o + c, _mm512_fmadd_ps(normed, _mm512_loadu_ps(wf + c), _mm512_loadu_ps(bf + c)), m);
    }
  }
}

// The row's dropout in the AVX2 path: keep bits (column c at bit off + c) and the fp32 scale; bits null: none.
struct RowKeep8 {
  const uint64_t* bits;
  int64_t off;
  __m256 scale;
};

// x + res (+ bias), or x + dropout(res (+ bias)), at [c, c + 8) in fp32, also stored to sum + c.
template <typename T>
GPT_FAST_AVX2 inline __m256 add3_avx2(const T* x, const T* res, const T* bias, float* sum, int64_t c,
                                      const RowKeep8& k) {
  using V = cpu::Vec8<T>;
  __m256 v;
  if (k.bits) {
    __m256 d = V::load(res + c);
    if (bias) d = _mm256_add_ps(d, V::load(bias + c));
    v = _mm256_add_ps(V::load(x + c), cpu::apply_keep8(d, cpu::keep_bits(k.bits, k.off + c, 8), k.scale));
  } else {
    v = _mm256_add_ps(V::load(x + c), V::load(res + c));
    if (bias) v = _mm256_add_ps(v, V::load(bias + c));
  }
  _mm256_storeu_ps(sum + c, v);
  return v;
}

// The AVX2 + FMA path: 8 lanes, two accumulators (16 partial sums, as AVX-512's one), tails through load_part.
template <typename T>
GPT_FAST_AVX2 void add_layernorm_avx2(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out,
                                      int64_t begin, int64_t end, int64_t C, float eps, const cpu::Dropout* drop) {
  using V = cpu::Vec8<T>;
  const int64_t padded = (C + 7) / 8 * 8, full = C - C % 8, tail = C % 8;
  std::vector<float> buf(3 * padded, 0.f);  // row sum | fp32 weight | fp32 ln_bias, each (padded,)
  float *sum = buf.data(), *wf = sum + padded, *bf = wf + padded;
  for (int64_t c = 0; c < C; c += 8) {
    _mm256_storeu_ps(wf + c, cpu::load_part(w + c, std::min<int64_t>(8, C - c)));
    _mm256_storeu_ps(bf + c, cpu::load_part(b + c, std::min<int64_t>(8, C - c)));
  }
  const __m256 tail_mask = _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(tail)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  std::vector<uint64_t> bits(drop ? cpu::keep_words(C) : 0);  // the row's keep bits
  RowKeep8 keep{drop ? bits.data() : nullptr, 0, _mm256_set1_ps(drop ? static_cast<float>(drop->scale) : 1.f)};
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * C;
    const T* rr = res + r * C;
    keep.off = (r * C) & 3;  // bit of column 0
    if (drop) cpu::keep_bits_avx2(*drop, static_cast<uint64_t>(r * C), C, bits.data());
    __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= full; c += 16) {
      total0 = _mm256_add_ps(total0, add3_avx2(xr, rr, bias, sum, c, keep));
      total1 = _mm256_add_ps(total1, add3_avx2(xr, rr, bias, sum, c + 8, keep));
    }
    if (c < full) total0 = _mm256_add_ps(total0, add3_avx2(xr, rr, bias, sum, c, keep));
    if (tail) {  // lanes past C load as 0 and stay 0 in sum
      __m256 v;
      if (drop) {
        __m256 d = cpu::load_part(rr + full, tail);
        if (bias) d = _mm256_add_ps(d, cpu::load_part(bias + full, tail));
        v = _mm256_add_ps(cpu::load_part(xr + full, tail),
                          cpu::apply_keep8(d, cpu::keep_bits(bits.data(), keep.off + full, 8), keep.scale));
      } else {
        v = _mm256_add_ps(cpu::load_part(xr + full, tail), cpu::load_part(rr + full, tail));
        if (bias) v = _mm256_add_ps(v, cpu::load_part(bias + full, tail));
      }
      _mm256_storeu_ps(sum + full, v);
      total1 = _mm256_add_ps(total1, v);
    }
    const float mean0 = cpu::reduce_add_avx2(_mm256_add_ps(total0, total1)) / static_cast<float>(C);
    const __m256 vmean0 = _mm256_set1_ps(mean0);
    __m256 dsum = _mm256_setzero_ps(), sq = _mm256_setzero_ps();
    for (int64_t c = 0; c < padded; c += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(sum + c), vmean0);
      if (c == full) d = _mm256_and_ps(d, tail_mask);
      dsum = _mm256_add_ps(dsum, d);
      sq = _mm256_fmadd_ps(d, d, sq);
    }
    const float shift = cpu::reduce_add_avx2(dsum) / static_cast<float>(C);
    const __m256 vmean = _mm256_set1_ps(mean0 + shift);
    const float var = std::max(0.f, cpu::reduce_add_avx2(sq) / static_cast<float>(C) - shift * shift);
    const __m256 rstd = _mm256_set1_ps(1.f / std::sqrt(var + eps));
    T* o = out + r * C;
    for (int64_t c = 0; c < padded; c += 8) {
      const __m256 normed = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(sum + c), vmean), rstd);
      const __m256 y = _mm256_fmadd_ps(normed, _mm256_loadu_ps(wf + c), _mm256_loadu_ps(bf + c));
      if (c < full) V::store(o + c, y);
      else cpu::store_part(o + c, y, tail);
    }
  }
}
#endif

template <typename T>
void add_layernorm_rows(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out, int64_t rows,
                        int64_t C, float eps, const cpu::Dropout* drop) {
  [[maybe_unused]] const cpu::Isa isa = cpu::cpu_isa();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / C), [&](int64_t begin, int64_t end) {
#if GPT_FAST_HAVE_X86
    if constexpr (!std::is_same_v<T, double>) {
      if (isa >= cpu::Isa::kAvx512) return add_layernorm_avx512<T>(x, res, bias, w, b, out, begin, end, C, eps, drop);
      if (isa >= cpu::Isa::kAvx2) return add_layernorm_avx2<T>(x, res, bias, w, b, out, begin, end, C, eps, drop);
    }
#endif
    add_layernorm_scalar<T>(x, res, bias, w, b, out, begin, end, C, eps, drop);
  });
}

at::Tensor add_layernorm_cpu(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& bias,
                             const at::Tensor& weight, const at::Tensor& ln_bias, double eps, double dropout_p,
                             int64_t seed) {
  constexpr const char* op = "gpt_fast::add_layernorm";
  const int64_t C = check_add_layernorm_args(x, residual, bias, weight, ln_bias, eps, op);
  check_dropout_p(dropout_p, op);
  const cpu::Dropout dropout{static_cast<uint64_t>(seed), philox::dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p)};

  auto xc = x.contiguous();
  auto rc = residual.contiguous();
  auto wc = weight.contiguous();
  auto bc = ln_bias.contiguous();
  at::Tensor biasc = bias ? bias->contiguous() : at::Tensor();
  auto out = xc.new_empty(xc.sizes());
  const int64_t rows = xc.numel() / C;
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_layernorm_cpu", [&] {
    add_layernorm_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), rc.const_data_ptr<scalar_t>(),
                                 bias ? biasc.const_data_ptr<scalar_t>() : nullptr, wc.const_data_ptr<scalar_t>(),
                                 bc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, C,
                                 static_cast<float>(eps), dropout_p > 0 ? &dropout : nullptr);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("add_layernorm", &add_layernorm_cpu); }

}  // namespace gpt_fast
