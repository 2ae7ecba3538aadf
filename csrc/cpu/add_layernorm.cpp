// CPU kernel for gpt_fast::add_layernorm: out = layer_norm(x + residual [+ bias]) * weight + ln_bias.
// Post-LN as in GPT-1. Each row is read from memory once: the sum x + residual + bias goes to an fp32 row buffer
// (in L1) while its sum accumulates; the variance is then taken exactly around the mean from that buffer (no
// sum-of-squares cancellation) and the output written in a third pass over it. fp32 statistics; inputs and
// output in fp32, bf16 or fp16; any row width. Non-contiguous inputs are copied first.
// AVX-512 (16 lanes, weights converted to fp32 once per task) when the CPU has it, else a portable scalar loop.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/vec.h"

namespace gpt_fast {
namespace {

template <typename T>
void add_layernorm_scalar(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out, int64_t begin,
                          int64_t end, int64_t C, float eps) {
  std::vector<float> sum(C);
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * C;
    const T* rr = res + r * C;
    float mean = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      float v = static_cast<float>(xr[c]) + static_cast<float>(rr[c]);
      if (bias) v += static_cast<float>(bias[c]);
      sum[c] = v;
      mean += v;
    }
    mean /= static_cast<float>(C);
    float var = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      float d = sum[c] - mean;
      var += d * d;
    }
    const float rstd = 1.f / std::sqrt(var / static_cast<float>(C) + eps);
    T* o = out + r * C;
    for (int64_t c = 0; c < C; ++c) {
      o[c] = static_cast<T>((sum[c] - mean) * rstd * static_cast<float>(w[c]) + static_cast<float>(b[c]));
    }
  }
}

#if GPT_FAST_HAVE_X86
template <typename T>
GPT_FAST_AVX512 void add_layernorm_avx512(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out,
                                          int64_t begin, int64_t end, int64_t C, float eps) {
  using V = cpu::Vec16<T>;
  const int64_t padded = (C + 15) / 16 * 16;
  std::vector<float> buf(3 * padded, 0.f);  // row sum | fp32 weight | fp32 ln_bias, each (padded,)
  float *sum = buf.data(), *wf = sum + padded, *bf = wf + padded;
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = cpu::first_lanes(C - c);
    _mm512_storeu_ps(wf + c, V::load(w + c, m));
    _mm512_storeu_ps(bf + c, V::load(b + c, m));
  }
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * C;
    const T* rr = res + r * C;
    __m512 total = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {  // lanes past C load as 0 and stay 0 in sum
      const __mmask16 m = cpu::first_lanes(C - c);
      __m512 v = _mm512_add_ps(V::load(xr + c, m), V::load(rr + c, m));
      if (bias) v = _mm512_add_ps(v, V::load(bias + c, m));
      _mm512_storeu_ps(sum + c, v);
      total = _mm512_add_ps(total, v);
    }
    const float mean = _mm512_reduce_add_ps(total) / static_cast<float>(C);
    const __m512 vmean = _mm512_set1_ps(mean);
    __m512 sq = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {
      const __m512 d = _mm512_maskz_sub_ps(cpu::first_lanes(C - c), _mm512_loadu_ps(sum + c), vmean);
      sq = _mm512_fmadd_ps(d, d, sq);
    }
    const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(sq) / static_cast<float>(C) + eps));
    T* o = out + r * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = cpu::first_lanes(C - c);
      const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(sum + c), vmean), rstd);
      V::store(o + c, _mm512_fmadd_ps(normed, _mm512_loadu_ps(wf + c), _mm512_loadu_ps(bf + c)), m);
    }
  }
}
#endif

template <typename T>
void add_layernorm_rows(const T* x, const T* res, const T* bias, const T* w, const T* b, T* out, int64_t rows,
                        int64_t C, float eps) {
  [[maybe_unused]] const bool vector = cpu::use_avx512();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / C), [&](int64_t begin, int64_t end) {
#if GPT_FAST_HAVE_X86
    if constexpr (!std::is_same_v<T, double>) {
      if (vector) return add_layernorm_avx512<T>(x, res, bias, w, b, out, begin, end, C, eps);
    }
#endif
    add_layernorm_scalar<T>(x, res, bias, w, b, out, begin, end, C, eps);
  });
}

at::Tensor add_layernorm_cpu(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& bias,
                             const at::Tensor& weight, const at::Tensor& ln_bias, double eps) {
  constexpr const char* op = "gpt_fast::add_layernorm";
  const int64_t C = check_add_layernorm_args(x, residual, bias, weight, ln_bias, eps, op);

  auto xc = x.contiguous();
  auto rc = residual.contiguous();
  auto wc = weight.contiguous();
  auto bc = ln_bias.contiguous();
  at::Tensor biasc = bias ? bias->contiguous() : at::Tensor();
  auto out = at::empty_like(xc);
  const int64_t rows = xc.numel() / C;
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_layernorm_cpu", [&] {
    add_layernorm_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), rc.const_data_ptr<scalar_t>(),
                                 bias ? biasc.const_data_ptr<scalar_t>() : nullptr, wc.const_data_ptr<scalar_t>(),
                                 bc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, C,
                                 static_cast<float>(eps));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("add_layernorm", &add_layernorm_cpu); }

}  // namespace gpt_fast
