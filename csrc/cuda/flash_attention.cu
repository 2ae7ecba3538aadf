// Launcher for causal flash attention: tensor-core kernel (flash_attention.cuh) for bf16/fp16, SIMT kernel
// (flash_attention_fp32.cuh) for fp32; head size padded to 64 or 128. Torch-free.
#include <cmath>
#include <type_traits>

#include "dispatch.cuh"
#include "flash_attention.cuh"
#include "flash_attention_fp32.cuh"

namespace gpt_fast::cuda {

cudaError_t launch_flash_attention(DType dtype, const void* qkv, const uint8_t* key_padding_mask, void* out, int B,
                                   int T, int H, int D, cudaStream_t stream) {
  if (B == 0 || T == 0 || H == 0) return cudaSuccess;
  // log2(e) / sqrt(D), rounded once
  const float scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(D)));
  return dispatch_dtype(dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const AttentionArgs<T_> a{static_cast<const T_*>(qkv), key_padding_mask, static_cast<T_*>(out), B, T, H, D,
                              scale_log2};
    return dispatch_head_dim(D, [&](auto dp) {
      constexpr int DP = decltype(dp)::value;
      if constexpr (std::is_same_v<T_, float>) {
        const dim3 grid(ceil_div(T, kFa32BlockM), B * H), block(kFa32Threads);
        GF_LAUNCH((flash_attention_fp32_kernel<DP>), grid, block, stream, a);
      } else {
        const dim3 grid(ceil_div(T, kFaBlockM), B * H), block(kFaThreads);
        GF_LAUNCH((flash_attention_mma_kernel<T_, DP>), grid, block, stream, a);
      }
      return GF_LAST_ERROR();
    });
  });
}

}  // namespace gpt_fast::cuda
