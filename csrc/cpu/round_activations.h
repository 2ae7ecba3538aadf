// Rounding x to int8 per group of G values (int4-a8's activations), shared by gpt_fast::linear_quantized (x_bits 8)
// and gpt_fast::round_activations, both in round_activations.cpp's one loop. Internal to the CPU kernels.
#pragma once
#include <cstdint>

namespace gpt_fast::quantized {

// Groups [begin, end) of x (fp32, group i = x[i G, (i + 1) G)) rounded in place to the bits of
// reference.round_activations: s = max |x| / 127, q = round half to even (x / s) clamped to [-127, 127], x = q * s;
// an all-zero group stays 0 (s = 0), a group holding a NaN or an infinity becomes NaN (s = NaN, q = 0). Also, where
// the pointers are not null, q (xq[i G + k]), the scales (xscale[i]) and the sums of q (xqsum[i], for G <= 2^16;
// read back from xq, so xqsum needs xq).
void round_activation_groups(float* x, int8_t* xq, float* xscale, int32_t* xqsum, int64_t begin, int64_t end,
                             int64_t G);

}  // namespace gpt_fast::quantized
