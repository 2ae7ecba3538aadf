// CPU kernel for gpt_fast::bias_gelu_backward: grad_x = grad_out * gelu_tanh'(x + bias), the backward of
// bias_gelu (grad_bias, the column sum of grad_x, is taken by the autograd formula in gpt_fast/ops/bias_gelu.py).
// One pass: grad_out and x are read once, x + bias and the derivative are computed in fp32 and grad_x is written
// once in x's dtype. grad_out, x: (..., N) in fp32, bf16 or fp16 (any strides: non-contiguous ones are copied);
// bias: (N,). float64 is taken too, on the scalar path in double (for gradcheck).
//
// The derivative, with v = x + bias, u = sqrt(2/pi) (v + 0.044715 v^3) and s = sigmoid(2u) = (1 + tanh(u)) / 2:
//   gelu'(v) = s + 2 sqrt(2/pi) v (1 + 3 * 0.044715 v^2) s (1 - s),   1 - s = e s with e = exp(-2u)
// (no cancellation in 1 - s). v is clamped to [-9, 9] first, where gelu' is 0 or 1 to below 1e-26, so that v^3 and
// exp cannot overflow; a non-finite v gives NaN, as PyTorch's formula does (0 * inf) for +-inf.
// AVX-512 (16 lanes) or AVX2 + FMA (8 lanes) with vec.h's exp, else a portable scalar loop.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "checks.h"
#include "cpu/vec.h"
#include "cpu/vec_avx2.h"

namespace gpt_fast {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
constexpr float kClamp = 9.f;

template <typename A>  // A: float, or double for float64 inputs
A gelu_tanh_grad_scalar(A v) {
  if (!std::isfinite(v)) return static_cast<A>(NAN);
  v = std::min(std::max(v, static_cast<A>(-kClamp)), static_cast<A>(kClamp));
  const A c = static_cast<A>(kSqrt2OverPi), a = static_cast<A>(kCubic);
  const A e = std::exp(-2 * c * (v + a * v * v * v));
  const A s = 1 / (1 + e);
  return s + 2 * c * v * (1 + 3 * a * v * v) * (e * s) * s;
}

template <typename T>
void bias_gelu_backward_scalar(const T* g, const T* x, const T* bias, T* out, int64_t row_begin, int64_t row_end,
                               int64_t N) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t c = 0; c < N; ++c) {
      const A v = static_cast<A>(x[r * N + c]) + static_cast<A>(bias[c]);
      out[r * N + c] = static_cast<T>(static_cast<A>(g[r * N + c]) * gelu_tanh_grad_scalar(v));
    }
  }
}

#if GPT_FAST_HAVE_X86
// gelu'(v) in 16 fp32 lanes (the formula above).
GPT_FAST_AVX512 inline __m512 gelu_tanh_grad_avx512(__m512 v) {
  const __m512 abs = _mm512_abs_ps(v);
  const __mmask16 bad = _mm512_cmp_ps_mask(abs, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ);  // +-inf or NaN
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-kClamp)), _mm512_set1_ps(kClamp));
  const __m512 v2 = _mm512_mul_ps(v, v);
  constexpr float kMinus2c = -2.f * kSqrt2OverPi;
  const __m512 minus_2u = _mm512_mul_ps(v, _mm512_fmadd_ps(v2, _mm512_set1_ps(kMinus2c * kCubic), _mm512_set1_ps(kMinus2c)));
  const __m512 e = cpu::exp_fp32(minus_2u);  // |2u| <= 66.4: no clamping inside
  // s = 1 / (1 + e): 14-bit estimate and one Newton step (~1 ulp), cheaper than a 512-bit division
  const __m512 denom = _mm512_add_ps(_mm512_set1_ps(1.f), e);
  const __m512 r0 = _mm512_rcp14_ps(denom);
  const __m512 s = _mm512_mul_ps(r0, _mm512_fnmadd_ps(denom, r0, _mm512_set1_ps(2.f)));
  // 2 c v (1 + 3 a v^2) = v (2c + 6ca v^2)
  const __m512 poly = _mm512_mul_ps(v, _mm512_fmadd_ps(v2, _mm512_set1_ps(6.f * kSqrt2OverPi * kCubic),
                                                       _mm512_set1_ps(2.f * kSqrt2OverPi)));
  const __m512 d = _mm512_fmadd_ps(_mm512_mul_ps(poly, _mm512_mul_ps(e, s)), s, s);
  return _mm512_mask_blend_ps(bad, d, _mm512_set1_ps(NAN));
}

template <typename T>
GPT_FAST_AVX512 void bias_gelu_backward_avx512(const T* g, const T* x, const T* bias, T* out, int64_t row_begin,
                                               int64_t row_end, int64_t N) {
  using V = cpu::Vec16<T>;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* gr = g + r * N;
    const T* xr = x + r * N;
    T* o = out + r * N;
    int64_t c = 0;
    for (; c + 16 <= N; c += 16) {
      const __m512 v = _mm512_add_ps(V::load(xr + c), V::load(bias + c));
      V::store(o + c, _mm512_mul_ps(V::load(gr + c), gelu_tanh_grad_avx512(v)));
    }
    if (c < N) {  // the row tail, masked
      const __mmask16 m = cpu::first_lanes(N - c);
      const __m512 v = _mm512_add_ps(V::load(xr + c, m), V::load(bias + c, m));
      V::store(o + c, _mm512_mul_ps(V::load(gr + c, m), gelu_tanh_grad_avx512(v)), m);
    }
  }
}

// gelu'(v) in 8 fp32 lanes (the same formula, vec_avx2.h's exp).
GPT_FAST_AVX2 inline __m256 gelu_tanh_grad_avx2(__m256 v) {
  const __m256 abs = _mm256_andnot_ps(_mm256_set1_ps(-0.f), v);
  const __m256 bad = _mm256_cmp_ps(abs, _mm256_set1_ps(INFINITY), _CMP_NLT_UQ);  // +-inf or NaN
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-kClamp)), _mm256_set1_ps(kClamp));
  const __m256 v2 = _mm256_mul_ps(v, v);
  constexpr float kMinus2c = -2.f * kSqrt2OverPi;
  const __m256 minus_2u = _mm256_mul_ps(v, _mm256_fmadd_ps(v2, _mm256_set1_ps(kMinus2c * kCubic), _mm256_set1_ps(kMinus2c)));
  const __m256 e = cpu::exp_fp32_avx2(minus_2u);
  // s = 1 / (1 + e): 12-bit estimate and two Newton steps (vec_avx2.h's GELU does the same)
  const __m256 denom = _mm256_add_ps(_mm256_set1_ps(1.f), e);
  const __m256 r0 = _mm256_rcp_ps(denom);
  const __m256 r1 = _mm256_mul_ps(r0, _mm256_fnmadd_ps(denom, r0, _mm256_set1_ps(2.f)));
  const __m256 s = _mm256_fmadd_ps(r1, _mm256_fnmadd_ps(denom, r1, _mm256_set1_ps(1.f)), r1);
  const __m256 poly = _mm256_mul_ps(v, _mm256_fmadd_ps(v2, _mm256_set1_ps(6.f * kSqrt2OverPi * kCubic),
                                                       _mm256_set1_ps(2.f * kSqrt2OverPi)));
  const __m256 d = _mm256_fmadd_ps(_mm256_mul_ps(poly, _mm256_mul_ps(e, s)), s, s);
  return _mm256_blendv_ps(d, _mm256_set1_ps(NAN), bad);
}

template <typename T>
GPT_FAST_AVX2 void bias_gelu_backward_avx2(const T* g, const T* x, const T* bias, T* out, int64_t row_begin,
                                           int64_t row_end, int64_t N) {
  using V = cpu::Vec8<T>;
  const int64_t full = N - N % 8, tail = N % 8;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* gr = g + r * N;
    const T* xr = x + r * N;
    T* o = out + r * N;
    for (int64_t c = 0; c < full; c += 8) {
      const __m256 v = _mm256_add_ps(V::load(xr + c), V::load(bias + c));
      V::store(o + c, _mm256_mul_ps(V::load(gr + c), gelu_tanh_grad_avx2(v)));
    }
    if (tail) {
      const __m256 v = _mm256_add_ps(cpu::load_part(xr + full, tail), cpu::load_part(bias + full, tail));
      cpu::store_part(o + full, _mm256_mul_ps(cpu::load_part(gr + full, tail), gelu_tanh_grad_avx2(v)), tail);
    }
  }
}
#endif

at::Tensor bias_gelu_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& bias) {
  constexpr const char* op = "gpt_fast::bias_gelu_backward";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension, got a scalar");
  check_float_or_double_dtype(x, op, "x");
  check_like(grad_out, x, op, "grad_out");
  const int64_t N = x.size(-1);
  check_vector(bias, N, x, op, "bias");

  auto gc = grad_out.contiguous();
  auto xc = x.contiguous();
  auto bc = bias.contiguous();
  auto out = xc.new_empty(xc.sizes());  // (..., N)
  if (xc.numel() == 0) return out;
  const int64_t rows = xc.numel() / N;
  const int64_t grain = std::max<int64_t>(1, 32768 / N);  // ~32K elements per task
  [[maybe_unused]] const cpu::Isa isa = cpu::cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_gelu_backward_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
#if GPT_FAST_HAVE_X86
      if constexpr (!std::is_same_v<scalar_t, double>) {
        if (isa >= cpu::Isa::kAvx512) return bias_gelu_backward_avx512<scalar_t>(gp, xp, bp, op_, begin, end, N);
        if (isa >= cpu::Isa::kAvx2) return bias_gelu_backward_avx2<scalar_t>(gp, xp, bp, op_, begin, end, N);
      }
#endif
      bias_gelu_backward_scalar<scalar_t>(gp, xp, bp, op_, begin, end, N);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("bias_gelu_backward", &bias_gelu_backward_cpu); }

}  // namespace gpt_fast
