// Launcher for flash_attention_train (flash_attention_train.cuh): one SIMT kernel for fp32, bf16 and fp16, head
// size padded to 64 or 128. Torch-free.
#include <cmath>
#include <type_traits>

#include "dispatch.cuh"
#include "flash_attention_train.cuh"

namespace gpt_fast::cuda {

cudaError_t launch_flash_attention_train(DType dtype, const void* qkv, const uint8_t* key_padding_mask, void* out,
                                         float* lse, int B, int T, int H, int D, double dropout_p, uint64_t seed,
                                         cudaStream_t stream) {
  if (B == 0 || T == 0 || H == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto zero) {
    using E = decltype(zero);
    const TrainArgs<E> a{static_cast<const E*>(qkv), key_padding_mask, B, T, H, D, train_scale_log2(D), seed,
                         philox::dropout_threshold(dropout_p), static_cast<float>(1.0 / (1.0 - dropout_p))};
    return dispatch_head_dim(D, [&](auto dp) {
      constexpr int DP = decltype(dp)::value;
      const dim3 grid(ceil_div(T, kFtBlockM), B * H), block(kFtThreads);
      GF_LAUNCH((flash_train_forward_kernel<E, DP>), grid, block, stream, a, static_cast<E*>(out), lse);
      return GF_LAST_ERROR();
    });
  });
}

}  // namespace gpt_fast::cuda
