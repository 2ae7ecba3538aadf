// gpt_fast::round_activations (CPU): x (..., K) as float32 with each group of G consecutive values rounded to int8 by
// its own scale, the activations of int4-a8 (int4 weights, int8 activations): the quantized layers' "dequantize"
// engine rounds x with it before its GEMM, as the decode kernel (gpt_fast::linear_quantized, x_bits 8) rounds x
// before its byte products, with the same loop (round_activation_groups, also linear_quantized.cpp's). To the bits of
// reference.round_activations: s = max |x| / 127 in fp32, q = round half to even (x / s) in [-127, 127], x = q * s;
// an all-zero group stays 0, a group holding a NaN or an infinity becomes NaN. Two versions of the loops: plain C++
// for the build's baseline (the scalar tier; the rounding adds and subtracts 1.5 * 2^23, no libm call) and AVX2
// intrinsics (the avx2 tier and up); parallel over groups.
#include "cpu/round_activations.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "checks.h"
#include "cpu/int4_tile_vnni.h"  // kMaxVnniGroup
#include "cpu/vec_avx2.h"        // GPT_FAST_HAVE_X86, GPT_FAST_AVX2, cpu::use_avx2

namespace gpt_fast {
namespace quantized {

namespace {

constexpr float kRound = 12582912.f;  // 1.5 * 2^23: (r + kRound) - kRound rounds |r| < 2^22 half to even

// A group's scale from its largest |x| and its probe (the sum of x - x: NaN once a NaN or an infinity was seen).
inline float group_scale(float group_max, float probe) {
  return probe == 0.f ? group_max / 127.f : std::numeric_limits<float>::quiet_NaN();
}

// One value's q: round half to even (v / divisor) clamped to [-127, 127], times keep (0 for an all-zero or a NaN
// group, whose q is then 0); a NaN v (only in a NaN group) clamps to -127 first, so q is -0, as the AVX2 loop's.
inline float rounded(float v, float divisor, float keep) {
  return keep * std::min(127.f, std::max(-127.f, (v / divisor + kRound) - kRound));
}

// The largest |v[k]| and the probe (sum of v[k] - v[k]) of a group's values [k0, G), folded into those given.
inline void scan(const float* v, int64_t k0, int64_t G, float& group_max, float& probe) {
  for (int64_t k = k0; k < G; ++k) group_max = std::max(group_max, std::fabs(v[k])), probe += v[k] - v[k];
}

// A group's values [k0, G) rounded in place (v = q * s), q stored to q_row[k] where q_row is not null; returns the
// sum of those q (read only by the byte tiles, which take G <= kMaxVnniGroup: |sum| <= 127 G fits).
inline int32_t round_values(float* v, int8_t* q_row, int64_t k0, int64_t G, float divisor, float keep, float s) {
  int32_t sum = 0;
  for (int64_t k = k0; k < G; ++k) {
    const float q = rounded(v[k], divisor, keep);
    if (q_row) q_row[k] = static_cast<int8_t>(q), sum += static_cast<int32_t>(q);
    v[k] = q * s;
  }
  return sum;
}

// The portable loops (the scalar tier; compiled for the build's baseline ISA).
void round_groups(float* x, int8_t* xq, float* xscale, int32_t* xqsum, int64_t begin, int64_t end, int64_t G) {
  for (int64_t i = begin; i < end; ++i) {
    float* v = x + i * G;
    float group_max = 0.f, probe = 0.f;
    scan(v, 0, G, group_max, probe);
    const float s = group_scale(group_max, probe);
    const float divisor = s > 0.f ? s : 1.f, keep = s > 0.f ? 1.f : 0.f;
    const int32_t sum = round_values(v, xq ? xq + i * G : nullptr, 0, G, divisor, keep, s);
    if (xscale) xscale[i] = s;
    if (xqsum) xqsum[i] = G <= kMaxVnniGroup ? sum : 0;
  }
}

#if GPT_FAST_HAVE_X86
// The largest of 8 lanes (all finite: a NaN or infinity makes the probe, and so the scale, NaN anyway).
GPT_FAST_AVX2 inline float max_lanes(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// The sum of 8 int32 lanes.
GPT_FAST_AVX2 inline int32_t sum_lanes(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
}

// A group's scale (group_scale) from its values v[0, G), 8 at a time with AVX2 and reduced in registers.
GPT_FAST_AVX2 inline float group_scale_avx2(const float* v, int64_t G8, int64_t G) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 amax = _mm256_setzero_ps(), probes = _mm256_setzero_ps();
  for (int64_t k = 0; k < G8; k += 8) {
    const __m256 a = _mm256_loadu_ps(v + k);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, a));
    probes = _mm256_add_ps(probes, _mm256_sub_ps(a, a));
  }
  float group_max = max_lanes(amax);
  // a lane's probe is 0 or NaN: any NaN lane makes the group's probe NaN, as the scalar sum would
  const bool any_nan = _mm256_movemask_ps(_mm256_cmp_ps(probes, probes, _CMP_UNORD_Q)) != 0;
  float probe = any_nan ? std::numeric_limits<float>::quiet_NaN() : 0.f;
  scan(v, G8, G, group_max, probe);  // the last G % 8 values
  return group_scale(group_max, probe);
}

// The same as round_groups, 8 values a step with AVX2 intrinsics: first the scales of up to 64 groups, then their
// values, so that the divisions of neighbouring groups overlap (one group at a time, each group's division waited
// for its own maximum: ~1.8 cycles a value on Zen 4 with the reductions through memory, 12 us for 8 rows of 3072,
// ~6x the int8-a8 tile's time on one 16-column block; the plain loops, vectorized by the compiler, ~4). vdivps and
// vroundps (to nearest even) give the bits of the scalar division and kRound trick; max then min with the value
// first, so that a NaN value clamps to -127 as std::max does.
GPT_FAST_AVX2 void round_groups_avx2(float* x, int8_t* xq, float* xscale, int32_t* xqsum, int64_t begin,
                                     int64_t end, int64_t G) {
  const __m256 low = _mm256_set1_ps(-127.f), high = _mm256_set1_ps(127.f);
  const int64_t G8 = G - G % 8;  // the values taken 8 at a time; the last G % 8 go through the scalar helpers
  constexpr int64_t kChunk = 64;
  float scales[kChunk];
  for (int64_t c = begin; c < end; c += kChunk) {
    const int64_t n = std::min(kChunk, end - c);
    for (int64_t j = 0; j < n; ++j) scales[j] = group_scale_avx2(x + (c + j) * G, G8, G);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = c + j;
      float* v = x + i * G;
      const float s = scales[j], divisor = s > 0.f ? s : 1.f, keep = s > 0.f ? 1.f : 0.f;
      const __m256 divisors = _mm256_set1_ps(divisor), keeps = _mm256_set1_ps(keep), scale = _mm256_set1_ps(s);
      __m256i sums = _mm256_setzero_si256();
      for (int64_t k = 0; k < G8; k += 8) {
        __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(v + k), divisors),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm256_mul_ps(keeps, _mm256_min_ps(_mm256_max_ps(q, low), high));
        _mm256_storeu_ps(v + k, _mm256_mul_ps(q, scale));
        if (xq) {
          const __m256i qi = _mm256_cvtps_epi32(q);  // exact: q is an integer in [-127, 127]
          const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
          _mm_storel_epi64(reinterpret_cast<__m128i*>(xq + i * G + k), _mm_packs_epi16(words, words));
          sums = _mm256_add_epi32(sums, qi);
        }
      }
      const int32_t sum = round_values(v, xq ? xq + i * G : nullptr, G8, G, divisor, keep, s) + sum_lanes(sums);
      if (xscale) xscale[i] = s;
      if (xqsum) xqsum[i] = G <= kMaxVnniGroup ? sum : 0;
    }
  }
}
#endif

}  // namespace

void round_activation_groups(float* x, int8_t* xq, float* xscale, int32_t* xqsum, int64_t begin, int64_t end,
                             int64_t G) {
#if GPT_FAST_HAVE_X86
  if (cpu::use_avx2()) return round_groups_avx2(x, xq, xscale, xqsum, begin, end, G);
#endif
  round_groups(x, xq, xscale, xqsum, begin, end, G);
}

}  // namespace quantized

namespace {

at::Tensor round_activations_cpu(const at::Tensor& x, int64_t group_size) {
  constexpr const char* op = "gpt_fast::round_activations";
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension (..., K), got a scalar");
  check_float_or_double_dtype(x, op, "x");
  const int64_t K = x.size(-1);
  TORCH_CHECK_VALUE(group_size > 0 && K % group_size == 0, op, ": group_size must be positive and divide x's last ",
                    "dimension K=", K, ", got ", group_size);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = x.new_empty(x.sizes(), at::kFloat);
  const int64_t groups = out.numel() / group_size;
  float* data = out.mutable_data_ptr<float>();
  // per task: whole chunks of groups, each group converted to float32 into out and rounded there while in L1
  const int64_t chunk = std::max<int64_t>(1, 4096 / group_size);  // groups converted before they are rounded
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "round_activations_cpu", [&] {
    const scalar_t* src = xc.const_data_ptr<scalar_t>();
    at::parallel_for(0, groups, std::max<int64_t>(1, 16384 / group_size), [&](int64_t begin, int64_t end) {
      for (int64_t g0 = begin; g0 < end; g0 += chunk) {
        const int64_t g1 = std::min(end, g0 + chunk);
        for (int64_t n = g0 * group_size; n < g1 * group_size; ++n) data[n] = static_cast<float>(src[n]);
        quantized::round_activation_groups(data, nullptr, nullptr, nullptr, g0, g1, group_size);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("round_activations", &round_activations_cpu); }

}  // namespace gpt_fast
