// Launcher for flash_attention_backward (flash_attention_backward.cuh): Delta, then the dK/dV pass, then the dQ
// pass, on one stream (each reads what the one before wrote). Torch-free.
#include <cmath>
#include <type_traits>

#include "dispatch.cuh"
#include "flash_attention_backward.cuh"

namespace gpt_fast::cuda {

size_t flash_attention_backward_workspace_bytes(int B, int T, int H) {
  return static_cast<size_t>(B) * H * T * sizeof(float);
}

cudaError_t launch_flash_attention_backward(DType dtype, const void* grad_out, const void* qkv, const void* out,
                                            const float* lse, const uint8_t* key_padding_mask, void* grad_qkv,
                                            void* workspace, int B, int T, int H, int D, double dropout_p,
                                            uint64_t seed, cudaStream_t stream) {
  if (B == 0 || T == 0 || H == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto zero) {
    using E = decltype(zero);
    const TrainArgs<E> a{static_cast<const E*>(qkv), key_padding_mask, B, T, H, D, train_scale_log2(D), seed,
                         philox::dropout_threshold(dropout_p), static_cast<float>(1.0 / (1.0 - dropout_p))};
    const BackwardArgs<E> g{a, static_cast<const E*>(grad_out), static_cast<const E*>(out), lse,
                            static_cast<float*>(workspace), static_cast<E*>(grad_qkv),
                            static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)))};
    GF_LAUNCH((flash_backward_delta_kernel<E>), dim3(ceil_div(T, kFbThreads), B * H), dim3(kFbThreads), stream, g);
    if (const cudaError_t err = GF_LAST_ERROR(); err != cudaSuccess) return err;
    return dispatch_head_dim(D, [&](auto dp) {
      constexpr int DP = decltype(dp)::value;
      constexpr int rows = fb_block_rows(DP);
      GF_LAUNCH((flash_backward_dkdv_kernel<E, DP>), dim3(ceil_div(T, rows), B * H), dim3(kFbThreads), stream, g);
      if (const cudaError_t err = GF_LAST_ERROR(); err != cudaSuccess) return err;
      GF_LAUNCH((flash_backward_dq_kernel<E, DP>), dim3(ceil_div(T, rows), B * H), dim3(kFbThreads), stream, g);
      return GF_LAST_ERROR();
    });
  });
}

}  // namespace gpt_fast::cuda
