// 8-lane AVX2 (+FMA, F16C) fp32 helpers for the avx2 level of the CPU kernels (cpu_isa.h): exp and tanh-GELU with
// the formulas of the 16-lane AVX-512 ones in vec.h, rebuilt from AVX2 instructions (no scalef, no rcp14).
// Every function carries GPT_FAST_AVX2; call them only when use_avx2() is true.
#pragma once
#include "cpu/vec.h"  // GPT_FAST_HAVE_X86, GPT_FAST_AVX2, <immintrin.h>

namespace gpt_fast::cpu {

#if GPT_FAST_HAVE_X86

// exp(x) in fp32, about 1 ulp: x = n ln2 + r, |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial, times 2^n
// built in the exponent field. Inputs are clamped to [-87, 88] so that 2^n stays a normal number (n >= -126).
GPT_FAST_AVX2 inline __m256 exp_fp32_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln2 split hi + lo: exact n*hi
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));  // n in [-126, 127]: 2^n is exact
}

// tanh-GELU in fp32 as v / (1 + exp(-2u)), u = sqrt(2/pi)(v + 0.044715 v^3) (see gelu_tanh_fp32 in vec.h). A true
// division: it runs once per output, not per weight, so its cost does not show.
GPT_FAST_AVX2 inline __m256 gelu_tanh_fp32_avx2(__m256 v) {
  const __m256 v2 = _mm256_mul_ps(v, v);
  constexpr float kMinus2c = -2.f * 0.7978845608028654f;  // -2 sqrt(2/pi)
  const __m256 minus_2u =
      _mm256_mul_ps(v, _mm256_fmadd_ps(v2, _mm256_set1_ps(kMinus2c * 0.044715f), _mm256_set1_ps(kMinus2c)));
  return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.f), exp_fp32_avx2(minus_2u)));
}

#endif  // GPT_FAST_HAVE_X86

}  // namespace gpt_fast::cpu
