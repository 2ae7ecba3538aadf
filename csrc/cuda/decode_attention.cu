// Launcher for decode attention (decode_attention.cuh): the split plan (flash-decoding when B x H blocks cannot
// fill the GPU), the attention kernel and, with more than one split, the merge kernel. Torch-free.
#include <algorithm>
#include <cmath>

#include "decode_attention.cuh"
#include "dispatch.cuh"

namespace gpt_fast::cuda {

DecodePlan plan_decode_attention(int B, int S, int H, int D, int Tmax, int sm_count) {
  const int heads = std::max(1, B * H);
  const int wanted = std::max(1, ceil_div(2 * std::max(1, sm_count), heads));  // about two blocks per SM
  const int most = std::max(1, ceil_div(Tmax, kDecWarps * kWarp));             // at least 128 keys per split
  int splits = std::min(wanted, most);
  const int chunk = ceil_div(ceil_div(Tmax, splits), kWarp) * kWarp;
  splits = ceil_div(Tmax, chunk);
  const int DP = D <= 64 ? 64 : 128;
  const size_t items = static_cast<size_t>(B) * S * H;
  const size_t bytes = splits > 1 ? static_cast<size_t>(splits) * items * (DP + 2) * sizeof(float) : 0;
  return DecodePlan{splits, chunk, bytes};
}

cudaError_t launch_decode_attention(DType dtype, const DecodePlan& plan, const void* qkv, void* k_cache,
                                    void* v_cache, const int64_t* cache_lengths, void* out, void* workspace, int B,
                                    int S, int H, int D, int Tmax, cudaStream_t stream) {
  if (B == 0 || S == 0 || H == 0) return cudaSuccess;
  // log2(e) / sqrt(D), rounded once
  const float scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(D)));
  return dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    return dispatch_head_dim(D, [&](auto dp) {
      constexpr int DP = decltype(dp)::value;
      const int64_t items = static_cast<int64_t>(B) * S * H;
      float* part_o = plan.splits > 1 ? static_cast<float*>(workspace) : nullptr;
      float* part_ml = plan.splits > 1 ? part_o + plan.splits * items * DP : nullptr;
      const DecodeArgs<T> a{static_cast<const T*>(qkv), static_cast<T*>(k_cache), static_cast<T*>(v_cache),
                            cache_lengths, static_cast<T*>(out), part_o, part_ml, B, S, H, D, Tmax, plan.chunk,
                            scale_log2};
      GF_LAUNCH((decode_attention_kernel<T, DP>), dim3(plan.splits, B * H), dim3(kDecThreads), stream, a);
      if (plan.splits > 1) {
        const cudaError_t err = GF_LAST_ERROR();
        if (err != cudaSuccess) return err;
        const dim3 grid(static_cast<unsigned>((items + kDecWarps - 1) / kDecWarps));
        GF_LAUNCH((decode_merge_kernel<T, DP>), grid, dim3(kDecThreads), stream, a, plan.splits);
      }
      return GF_LAST_ERROR();
    });
  });
}

}  // namespace gpt_fast::cuda
