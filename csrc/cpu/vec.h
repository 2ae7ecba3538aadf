// Vector helpers shared by the CPU kernels of the linear family, add_layernorm and bias_gelu: 16-lane fp32
// loads/stores of fp32/bf16/fp16 data, and a fast exp and tanh-GELU. The run-time choice of path is cpu_isa.h.
//
// Every AVX-512 function carries GPT_FAST_AVX512 (a target attribute), so the rest of the extension is compiled
// for the baseline ISA and runs anywhere; callers take the vector path only when use_avx512() says so.
// Lambdas do not inherit target attributes: a parallel_for body must call a GPT_FAST_AVX512 function, not
// contain intrinsics itself.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "cpu/cpu_isa.h"  // GPT_FAST_HAVE_X86, cpu_isa(), use_avx512(), ...

#if GPT_FAST_HAVE_X86
#include <immintrin.h>
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsic headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define GPT_FAST_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
// AVX-512 plus the BF16 dot-product instruction (vdpbf16ps); use only when use_avx512_bf16() is true.
#define GPT_FAST_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
// AVX-512 plus AMX tiles with bf16 (tdpbf16ps); use only when use_amx() is true.
#define GPT_FAST_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,amx-tile,amx-bf16")))
// AVX2 + FMA + F16C, the avx2 level of cpu_isa.h; use only when use_avx2() is true. 8-lane helpers: cpu/vec_avx2.h.
#define GPT_FAST_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace gpt_fast::cpu {

// Scalar tanh-GELU in fp32, the portable path's definition: 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))).
inline float gelu_tanh_scalar(float v) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * v * (1.f + std::tanh(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
}

#if GPT_FAST_HAVE_X86

// 16 lanes of T <-> 16 fp32 lanes. mask selects the lanes touched (tails of rows); others load as 0.
template <typename T>
struct Vec16;

template <>
struct Vec16<float> {
  GPT_FAST_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  GPT_FAST_AVX512 static __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  GPT_FAST_AVX512 static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  GPT_FAST_AVX512 static void store(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
};

// bf16 -> fp32 is exact (a shift); fp32 -> bf16 rounds to nearest even, NaN stays a quiet NaN. The attention
// kernels' store_as<BFloat16> (attention_math.h) rounds the same way in portable vector code; these intrinsics
// stay because GCC compiles that portable form to longer AVX-512 code (split widening, vpermt2w narrowing).
GPT_FAST_AVX512 inline __m512 bf16_bits_to_fp32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
GPT_FAST_AVX512 inline __m256i fp32_to_bf16_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

template <>
struct Vec16<c10::BFloat16> {
  using T = c10::BFloat16;
  GPT_FAST_AVX512 static __m512 load(const T* p) { return bf16_bits_to_fp32(_mm256_loadu_si256((const __m256i*)p)); }
  GPT_FAST_AVX512 static __m512 load(const T* p, __mmask16 m) {
    return bf16_bits_to_fp32(_mm256_maskz_loadu_epi16(m, p));
  }
  GPT_FAST_AVX512 static void store(T* p, __m512 v) { _mm256_storeu_si256((__m256i*)p, fp32_to_bf16_bits(v)); }
  GPT_FAST_AVX512 static void store(T* p, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(p, m, fp32_to_bf16_bits(v));
  }
};

template <>
struct Vec16<c10::Half> {
  using T = c10::Half;
  static constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  GPT_FAST_AVX512 static __m512 load(const T* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
  GPT_FAST_AVX512 static __m512 load(const T* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
  GPT_FAST_AVX512 static void store(T* p, __m512 v) { _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(v, kRound)); }
  GPT_FAST_AVX512 static void store(T* p, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, kRound));
  }
};

// Mask of the first n (0..16) lanes.
GPT_FAST_AVX512 inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// exp(x) in fp32, relative error about 1 ulp: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-7 Taylor
// polynomial (truncation < 6e-9 relative), then scaled by 2^n. Inputs are clamped to [-88, 88] (no inf/denormals).
GPT_FAST_AVX512 inline __m512 exp_fp32(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 split hi + lo: exact n*hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// tanh-GELU in fp32. 0.5 v (1 + tanh(u)) == v * sigmoid(2u) == v / (1 + exp(-2u)), u = sqrt(2/pi)(v + 0.044715 v^3);
// this form needs one exp and one reciprocal and has no cancellation. Large |v| saturates correctly (v or -0).
// -inf gives NaN, as PyTorch's 0.5 v (1 + tanh(u)) = -inf * 0 does (the form above would give -inf); +inf gives inf.
GPT_FAST_AVX512 inline __m512 gelu_tanh_fp32(__m512 v) {
  const __m512 v2 = _mm512_mul_ps(v, v);
  constexpr float kMinus2c = -2.f * 0.7978845608028654f;  // -2 sqrt(2/pi)
  // -2u = v * (-2 sqrt(2/pi) - 2 sqrt(2/pi) 0.044715 v^2)
  const __m512 minus_2u =
      _mm512_mul_ps(v, _mm512_fmadd_ps(v2, _mm512_set1_ps(kMinus2c * 0.044715f), _mm512_set1_ps(kMinus2c)));
  const __m512 denom = _mm512_add_ps(_mm512_set1_ps(1.f), exp_fp32(minus_2u));  // in [1, 1 + e^88]
  // 1 / denom: 14-bit estimate refined by one Newton step (~1 ulp), far cheaper than a 512-bit division.
  const __m512 r0 = _mm512_rcp14_ps(denom);
  const __m512 r1 = _mm512_mul_ps(r0, _mm512_fnmadd_ps(denom, r0, _mm512_set1_ps(2.f)));
  const __mmask16 minus_inf = _mm512_cmp_ps_mask(v, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
  return _mm512_mask_blend_ps(minus_inf, _mm512_mul_ps(v, r1), _mm512_set1_ps(NAN));
}

// The epilogue of the few-row linear kernels (linear_small_m, linear_quantized): bias, tanh-GELU and residual on
// the fp32 sums total[0..rows) of rows [m0, m0 + rows) x columns [n0, n0 + 16) (clipped to a.N), then the only
// store. Args: any struct with bias, residual (rows a.ld_residual apart), out (T*; (M, N)), N and gelu.
template <typename T, typename Args>
GPT_FAST_AVX512 inline void finish_columns16(const Args& a, const __m512* total, int rows, int64_t m0, int64_t n0) {
  using V = Vec16<T>;
  const __mmask16 lanes = first_lanes(a.N - n0);
  const __m512 bias = a.bias ? V::load(a.bias + n0, lanes) : _mm512_setzero_ps();
  for (int m = 0; m < rows; ++m) {
    __m512 v = _mm512_add_ps(total[m], bias);
    if (a.gelu) v = gelu_tanh_fp32(v);
    if (a.residual) v = _mm512_add_ps(v, V::load(a.residual + (m0 + m) * a.ld_residual + n0, lanes));
    V::store(a.out + (m0 + m) * a.N + n0, v, lanes);
  }
}

#endif  // GPT_FAST_HAVE_X86

}  // namespace gpt_fast::cpu
