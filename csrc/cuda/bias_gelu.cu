// Launcher for the bias_gelu kernel (bias_gelu.cuh): vectorised when the row width and pointers allow it, grid
// capped at a few waves of blocks (the kernel loops). Torch-free.
#include <algorithm>

#include "bias_gelu.cuh"
#include "dispatch.cuh"

namespace gpt_fast::cuda {

cudaError_t launch_bias_gelu(DType dtype, const void* x, const void* bias, void* out, int64_t total, int64_t N,
                             cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool vec = N % Vec<T>::N == 0 && aligned(x) && aligned(bias) && aligned(out);
    const int64_t work = vec ? total / Vec<T>::N : total;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((work + kGeluThreads - 1) / kGeluThreads, 4096))),
        block(kGeluThreads);
    const T* xt = static_cast<const T*>(x);
    const T* bt = static_cast<const T*>(bias);
    T* ot = static_cast<T*>(out);
    if (vec) {
      GF_LAUNCH((bias_gelu_kernel<T, true>), grid, block, stream, xt, bt, ot, total, N);
    } else {
      GF_LAUNCH((bias_gelu_kernel<T, false>), grid, block, stream, xt, bt, ot, total, N);
    }
    return GF_LAST_ERROR();
  });
}

}  // namespace gpt_fast::cuda
