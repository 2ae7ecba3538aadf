// The packed weight layout shared by gpt_fast::pack_linear_weight and gpt_fast::linear_small_m.
//
// A linear layer out = x @ W, W of logical shape (K, N) = (in_features, out_features), is stored as
// (ceil(N / 16), K, 16): block b holds columns [16 b, 16 b + 16) of W for every k, zero-padded past N, so one
// 16-lane vector load at [b, k, :] gives W[k, 16 b : 16 b + 16] and a block is one contiguous stream of K * 16
// elements. The dtype is the weight's own (fp32, bf16 or fp16).
// The padding is -0.0 and W's own zeros are +0.0 (pack_linear_weight turns -0.0 into +0.0, which changes no
// product): the sign bit marks padding, so linear_small_m can check its out_features against the packed weight
// exactly (check_packed_out_features in csrc/checks.h), not only up to the block count the shape gives.
#pragma once
#include <cstdint>

namespace gpt_fast::cpu {

constexpr int64_t kLinearBlockN = 16;  // output columns per block = fp32 lanes of one AVX-512 register

// ceil(out_features / 16) for out_features >= 0, written so that it cannot overflow near INT64_MAX.
inline int64_t linear_blocks(int64_t out_features) {
  return out_features / kLinearBlockN + (out_features % kLinearBlockN != 0);
}

}  // namespace gpt_fast::cpu
