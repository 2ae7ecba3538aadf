// gpt_fast::round_activations (CPU): x (..., K) as float32 with each group of G consecutive values rounded to int8 by
// its own scale, the activations of int4-a8 (int4 weights, int8 activations): the quantized layers' "dequantize"
// engine rounds x with it before its GEMM, as the decode kernel (gpt_fast::linear_quantized, x_bits 8) rounds x
// before its byte products, with the same loop (round_activation_groups, also linear_quantized.cpp's). To the bits of
// reference.round_activations: s = max |x| / 127 in fp32, q = round half to even (x / s) in [-127, 127], x = q * s;
// an all-zero group stays 0, a group holding a NaN or an infinity becomes NaN. The loops are plain C++ that the
// compiler vectorizes (no libm call: the rounding adds and subtracts 1.5 * 2^23), compiled twice: for the build's
// baseline (the scalar tier) and for AVX2 (the avx2 tier and up); parallel over groups.
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

// The loops, inlined into the portable entry below and into its AVX2 twin, which the compiler vectorizes 8 lanes
// wide (its divisions are most of the time: x / s must be a true division to round as the reference does).
__attribute__((always_inline)) inline void round_groups(float* x, int8_t* xq, float* xscale, int32_t* xqsum,
                                                        int64_t begin, int64_t end, int64_t G) {
  constexpr int kLanes = 8;  // independent partial maxima, so that the compiler vectorizes the first loop
  for (int64_t i = begin; i < end; ++i) {
    float* v = x + i * G;
    float amax[kLanes] = {}, probe[kLanes] = {};  // probe: v - v, NaN once a NaN or an infinity was seen
    int64_t k = 0;
    for (; k + kLanes <= G; k += kLanes) {
      for (int l = 0; l < kLanes; ++l) amax[l] = std::max(amax[l], std::fabs(v[k + l]));
      for (int l = 0; l < kLanes; ++l) probe[l] += v[k + l] - v[k + l];
    }
    for (int l = 0; k < G; ++k, ++l) {  // l < kLanes: fewer than kLanes left
      amax[l] = std::max(amax[l], std::fabs(v[k]));
      probe[l] += v[k] - v[k];
    }
    float group_max = 0.f, finite = 0.f;
    for (int l = 0; l < kLanes; ++l) group_max = std::max(group_max, amax[l]), finite += probe[l];
    const float s = finite == 0.f ? group_max / 127.f : std::numeric_limits<float>::quiet_NaN();
    const float divisor = s > 0.f ? s : 1.f, keep = s > 0.f ? 1.f : 0.f;
    constexpr float kRound = 12582912.f;  // 1.5 * 2^23: (r + kRound) - kRound rounds |r| < 2^22 half to even
    auto round_group = [&](auto store_q) {  // vectorizes (no libm call): v / s, the rounding, the clamp
      for (int64_t j = 0; j < G; ++j) {
        const float q = keep * std::min(127.f, std::max(-127.f, (v[j] / divisor + kRound) - kRound));
        store_q(j, q);
        v[j] = q * s;
      }
    };
    if (xq) {
      round_group([&](int64_t j, float q) { xq[i * G + j] = static_cast<int8_t>(q); });
    } else {
      round_group([](int64_t, float) {});
    }
    if (xscale) xscale[i] = s;
    if (xqsum) {
      int32_t sum = 0;  // read only by the byte tiles, which take G <= kMaxVnniGroup: |sum| <= 127 G fits
      if (G <= kMaxVnniGroup)
        for (k = 0; k < G; ++k) sum += xq[i * G + k];
      xqsum[i] = sum;
    }
  }
}

#if GPT_FAST_HAVE_X86
GPT_FAST_AVX2 void round_groups_avx2(float* x, int8_t* xq, float* xscale, int32_t* xqsum, int64_t begin,
                                     int64_t end, int64_t G) {
  round_groups(x, xq, xscale, xqsum, begin, end, G);
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
