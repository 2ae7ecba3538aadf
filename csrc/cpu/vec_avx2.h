// AVX2 + FMA + F16C helpers of the CPU kernels add_layernorm, bias_gelu and linear_small_m (the AVX2 tier for CPUs
// without AVX-512, e.g. AMD Zen 2/3): 8-lane fp32 loads/stores of fp32/bf16/fp16 data (converted in registers, math in
// fp32), partial loads/stores for row tails, and a fast exp and tanh-GELU with the same formulas as vec.h's
// AVX-512 ones.
//
// Every function carries GPT_FAST_AVX2 (a target attribute), so the rest of the extension keeps the baseline ISA;
// callers take these paths only when cpu::use_avx2() says so. As in vec.h, a lambda does not inherit a target
// attribute: a parallel_for body must call a GPT_FAST_AVX2 function, not contain intrinsics itself.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/cpu_isa.h"  // GPT_FAST_HAVE_X86, use_avx2()

#if GPT_FAST_HAVE_X86
#include <immintrin.h>
#ifndef GPT_FAST_AVX2
#define GPT_FAST_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace gpt_fast::cpu {

// 8 lanes of T <-> 8 fp32 lanes. load_part/store_part touch the first n (0..8) elements only (row tails); the
// other lanes load as 0.
template <typename T>
struct Vec8;

template <>
struct Vec8<float> {
  GPT_FAST_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  GPT_FAST_AVX2 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
};

// bf16 -> fp32 is exact (a shift); fp32 -> bf16 rounds to nearest even, NaN stays a quiet NaN (as vec.h).
GPT_FAST_AVX2 inline __m256 bf16_bits_to_fp32_avx2(__m128i h) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
GPT_FAST_AVX2 inline __m128i fp32_to_bf16_bits_avx2(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
  // 8 x 32-bit (each <= 0xFFFF) -> 8 x 16-bit: packus works per 128-bit half, so gather the halves' low quads.
  const __m256i packed = _mm256_packus_epi32(rounded, rounded);  // [a0..3 a0..3 | a4..7 a4..7]
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));  // quads 0 and 2
}

template <>
struct Vec8<c10::BFloat16> {
  using T = c10::BFloat16;
  GPT_FAST_AVX2 static __m256 load(const T* p) { return bf16_bits_to_fp32_avx2(_mm_loadu_si128((const __m128i*)p)); }
  GPT_FAST_AVX2 static void store(T* p, __m256 v) { _mm_storeu_si128((__m128i*)p, fp32_to_bf16_bits_avx2(v)); }
};

template <>
struct Vec8<c10::Half> {
  using T = c10::Half;
  static constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  GPT_FAST_AVX2 static __m256 load(const T* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  GPT_FAST_AVX2 static void store(T* p, __m256 v) { _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(v, kRound)); }
};

// The first n (0..8) elements at p as fp32 lanes, the rest 0 (AVX2 has no masked 16-bit loads: a copy).
template <typename T>
GPT_FAST_AVX2 inline __m256 load_part(const T* p, int64_t n) {
  T tmp[8] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(T));
  return Vec8<T>::load(tmp);
}

// Writes the first n (0..8) lanes of v to p.
template <typename T>
GPT_FAST_AVX2 inline void store_part(T* p, __m256 v, int64_t n) {
  T tmp[8];
  Vec8<T>::store(tmp, v);
  std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(T));
}

// Sum of the 8 lanes.
GPT_FAST_AVX2 inline float reduce_add_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x) in fp32, about 1 ulp, vec.h's exp_fp32 in 8 lanes: x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor
// polynomial of exp(r), times 2^n built in the exponent bits. x is clamped to [-88, 88], so n is in [-127, 127]
// and 2^n is a normal number or (n = -127) 0, no inf.
GPT_FAST_AVX2 inline __m256 exp_fp32_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.f)), _mm256_set1_ps(88.f));
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
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));  // 0..254
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
}

// tanh-GELU in fp32 as v / (1 + exp(-2u)), u = sqrt(2/pi)(v + 0.044715 v^3) (vec.h's gelu_tanh_fp32: no
// cancellation, saturates to v or -0; -inf gives NaN as PyTorch does). The reciprocal is a 12-bit estimate refined
// by two Newton steps, the second in residual form (one step leaves ~1.5e-7 relative error, 3.8x PyTorch's own
// fp32 error at GPT-1 shapes).
GPT_FAST_AVX2 inline __m256 gelu_tanh_fp32_avx2(__m256 v) {
  const __m256 v2 = _mm256_mul_ps(v, v);
  constexpr float kMinus2c = -2.f * 0.7978845608028654f;  // -2 sqrt(2/pi)
  const __m256 minus_2u =
      _mm256_mul_ps(v, _mm256_fmadd_ps(v2, _mm256_set1_ps(kMinus2c * 0.044715f), _mm256_set1_ps(kMinus2c)));
  const __m256 denom = _mm256_add_ps(_mm256_set1_ps(1.f), exp_fp32_avx2(minus_2u));  // in [1, 1 + e^88]
  const __m256 r0 = _mm256_rcp_ps(denom);
  const __m256 r1 = _mm256_mul_ps(r0, _mm256_fnmadd_ps(denom, r0, _mm256_set1_ps(2.f)));
  const __m256 r2 = _mm256_fmadd_ps(r1, _mm256_fnmadd_ps(denom, r1, _mm256_set1_ps(1.f)), r1);
  const __m256 minus_inf = _mm256_cmp_ps(v, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
  return _mm256_blendv_ps(_mm256_mul_ps(v, r2), _mm256_set1_ps(NAN), minus_inf);
}

}  // namespace gpt_fast::cpu

#endif  // GPT_FAST_HAVE_X86
