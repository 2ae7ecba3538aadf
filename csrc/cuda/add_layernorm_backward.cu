// Launcher for the add_layernorm backward kernels (add_layernorm_backward.cuh): the row kernel on
// min(ceil(rows / 4), 256) blocks of 4 warps, then the column-sum kernel over their partial rows. Torch-free.
#include <algorithm>

#include "add_layernorm_backward.cuh"
#include "dispatch.cuh"

namespace gpt_fast::cuda {

namespace {
int64_t backward_blocks(int64_t rows) {
  return std::min<int64_t>((rows + kLnBackwardWarpsPerBlock - 1) / kLnBackwardWarpsPerBlock, kLnBackwardMaxBlocks);
}
}  // namespace

size_t add_layernorm_backward_workspace_bytes(int64_t rows, int C) {
  return static_cast<size_t>(backward_blocks(rows) * kLnBackwardWarpsPerBlock) * 2 * static_cast<size_t>(C) *
         sizeof(float);
}

cudaError_t launch_add_layernorm_backward(DType dtype, const void* grad_out, const void* x, const void* residual,
                                          const void* bias, const void* weight, void* grad_v, void* grad_weight,
                                          void* grad_ln_bias, void* grad_residual, void* workspace, int64_t rows,
                                          int C, float eps, double dropout_p, uint64_t seed, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    const int64_t blocks = backward_blocks(rows);
    float* partial = static_cast<float*>(workspace);
    if (blocks > 0) {
      LayerNormBackwardArgs<T> a{static_cast<const T*>(grad_out), static_cast<const T*>(x),
                                 static_cast<const T*>(residual), static_cast<const T*>(bias),
                                 static_cast<const T*>(weight), static_cast<T*>(grad_v),
                                 dropout_p > 0 ? static_cast<T*>(grad_residual) : nullptr, partial, rows, C, eps,
                                 dropout_p > 0, seed, philox::dropout_threshold(dropout_p),
                                 static_cast<float>(1.0 / (1.0 - dropout_p))};
      GF_LAUNCH((add_layernorm_backward_kernel<T>), dim3(static_cast<unsigned>(blocks)),
                dim3(kLnBackwardWarpsPerBlock * kWarp), stream, a);
    }
    const dim3 grid(static_cast<unsigned>((static_cast<int64_t>(C) + kLnParamsThreads - 1) / kLnParamsThreads)),
        block(kLnParamsThreads);
    GF_LAUNCH((add_layernorm_backward_params_kernel<T>), grid, block, stream, static_cast<const float*>(partial),
              blocks * kLnBackwardWarpsPerBlock, C, static_cast<T*>(grad_weight), static_cast<T*>(grad_ln_bias));
    return GF_LAST_ERROR();
  });
}

}  // namespace gpt_fast::cuda
