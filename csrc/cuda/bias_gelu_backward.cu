// Launcher for the bias_gelu backward kernel (bias_gelu_backward.cuh): vectorised when the row width and pointers
// allow it, grid capped at a few waves of blocks (the kernel loops). Torch-free.
#include <algorithm>

#include "bias_gelu_backward.cuh"
#include "dispatch.cuh"

namespace gpt_fast::cuda {

cudaError_t launch_bias_gelu_backward(DType dtype, const void* grad_out, const void* x, const void* bias,
                                      void* grad_x, int64_t total, int64_t N, cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool vec = N % Vec<T>::N == 0 && aligned(grad_out) && aligned(x) && aligned(bias) && aligned(grad_x);
    const int64_t work = vec ? total / Vec<T>::N : total;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((work + kGeluBackwardThreads - 1) / kGeluBackwardThreads,
                                                            4096))),
        block(kGeluBackwardThreads);
    const T* gt = static_cast<const T*>(grad_out);
    const T* xt = static_cast<const T*>(x);
    const T* bt = static_cast<const T*>(bias);
    T* ot = static_cast<T*>(grad_x);
    if (vec) {
      GF_LAUNCH((bias_gelu_backward_kernel<T, true>), grid, block, stream, gt, xt, bt, ot, total, N);
    } else {
      GF_LAUNCH((bias_gelu_backward_kernel<T, false>), grid, block, stream, gt, xt, bt, ot, total, N);
    }
    return GF_LAST_ERROR();
  });
}

}  // namespace gpt_fast::cuda
