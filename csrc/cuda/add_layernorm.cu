// Launcher for the add_layernorm kernel (add_layernorm.cuh): picks the register-cached vectorised variant with the
// fewest 128-bit chunks per lane that holds the row, or the scalar variant. Torch-free.
#include <type_traits>

#include "add_layernorm.cuh"
#include "dispatch.cuh"

namespace gpt_fast::cuda {

cudaError_t launch_add_layernorm(DType dtype, const void* x, const void* residual, const void* bias,
                                 const void* weight, const void* ln_bias, void* out, int64_t rows, int C, float eps,
                                 double dropout_p, uint64_t seed, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    const LayerNormArgs<T> a{static_cast<const T*>(x),      static_cast<const T*>(residual),
                             static_cast<const T*>(bias),   static_cast<const T*>(weight),
                             static_cast<const T*>(ln_bias), static_cast<T*>(out),
                             rows,                          C,
                             eps,                           dropout_p > 0,
                             seed,                          philox::dropout_threshold(dropout_p),
                             static_cast<float>(1.0 / (1.0 - dropout_p))};
    const dim3 grid(static_cast<unsigned>((rows + kLnWarpsPerBlock - 1) / kLnWarpsPerBlock)), block(kLnWarpsPerBlock * kWarp);
    auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool vec = C % Vec<T>::N == 0 && aligned(x) && aligned(residual) && aligned(bias) && aligned(weight) &&
                     aligned(ln_bias) && aligned(out);
    const int chunks = vec ? ceil_div(C, kWarp * Vec<T>::N) : 0;
    if (chunks >= 1 && chunks <= 2) {
      GF_LAUNCH((add_layernorm_kernel<T, 2>), grid, block, stream, a);
    } else if (chunks >= 3 && chunks <= 4) {
      GF_LAUNCH((add_layernorm_kernel<T, 4>), grid, block, stream, a);
    } else if (chunks >= 5 && chunks <= 8) {
      GF_LAUNCH((add_layernorm_kernel<T, 8>), grid, block, stream, a);
    } else {
      GF_LAUNCH((add_layernorm_kernel<T, 0>), grid, block, stream, a);
    }
    return GF_LAST_ERROR();
  });
}

}  // namespace gpt_fast::cuda
