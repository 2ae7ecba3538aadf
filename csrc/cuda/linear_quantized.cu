// Launcher for the linear_quantized kernel (linear_quantized.cuh): the bit width and the row tile (1, 2 or 4 rows
// per thread block) as template arguments, grid (ceil(N / 16), row tiles capped at 65535; the kernel loops over the
// rest). Torch-free.
#include <algorithm>

#include "dispatch.cuh"
#include "linear_quantized.cuh"

namespace gpt_fast::cuda {

cudaError_t launch_linear_quantized(DType dtype, const void* x, const uint8_t* packed, const void* bias,
                                    const void* residual, void* out, int64_t M, int K, int64_t N, int bits, int G,
                                    int64_t ld_residual, bool gelu, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  const int64_t blocks = quant::blocks(N);
  const int64_t block_bytes = bits == 8 ? quant::rows8(K) * quant::kBlockN : (K / G) * quant::group_bytes4(G);
  return dispatch_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto go = [&](auto bits_c, auto mr_c) {
      constexpr int BITS = decltype(bits_c)::value, MR = decltype(mr_c)::value;
      const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(std::min<int64_t>((M + MR - 1) / MR, 65535))),
          block(kQThreads);
      GF_LAUNCH((linear_quantized_kernel<T, BITS, MR>), grid, block, stream, static_cast<const T*>(x), packed,
                static_cast<const T*>(bias), static_cast<const T*>(residual), static_cast<T*>(out), M, K, N, G,
                block_bytes, ld_residual, gelu);
      return GF_LAST_ERROR();
    };
    auto with_rows = [&](auto bits_c) {
      if (M == 1) return go(bits_c, std::integral_constant<int, 1>{});
      if (M == 2) return go(bits_c, std::integral_constant<int, 2>{});
      return go(bits_c, std::integral_constant<int, 4>{});
    };
    return bits == 8 ? with_rows(std::integral_constant<int, 8>{}) : with_rows(std::integral_constant<int, 4>{});
  });
}

}  // namespace gpt_fast::cuda
