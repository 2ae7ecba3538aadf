// Shared-memory data movement for the tensor-core kernel: cp.async 16-byte global -> shared copies (with zero
// fill) and ldmatrix (four 8x8 b16 matrices per warp, plain or transposed) into mma fragments.
// ldmatrix_x4(r, row): lane l passes the address of row l % 8 of matrix l / 8; afterwards r[i] holds, for
// g = lane / 4, t = lane % 4, elements (g, 2t..2t+1) of matrix i, or with _trans elements (2t, g), (2t+1, g).
// Under the SIMT test layer (GF_SIMT) the copies are synchronous and ldmatrix reads the rows directly.
#pragma once
#include "mma.cuh"

namespace gpt_fast::cuda {

// 16 bytes from src to dst (shared), or 16 zero bytes when !valid. Both 16-byte aligned.
__device__ inline void cp_async_16(void* dst, const void* src, bool valid) {
#ifndef GF_SIMT
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
#else
  *static_cast<uint4*>(dst) = valid ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ inline void cp_async_commit() {
#ifndef GF_SIMT
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits for this thread's copies; a __syncthreads() after it makes every thread's copies visible.
__device__ inline void cp_async_wait_all() {
#ifndef GF_SIMT
  asm volatile("cp.async.wait_all;\n" ::);
#endif
}

template <bool kTrans, typename T>
__device__ inline void ldmatrix_x4(uint32_t r[4], const T* row) {
#ifndef GF_SIMT
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#else
  const T* rows[kWarp];
  gf_simt::warp_gather(row, rows);
  const int lane = threadIdx.x % kWarp, g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    if constexpr (kTrans)
      r[i] = pack2<T>(rows[i * 8 + 2 * t][g], rows[i * 8 + 2 * t + 1][g]);
    else
      r[i] = pack2<T>(rows[i * 8 + g][2 * t], rows[i * 8 + g][2 * t + 1]);
  }
#endif
}

}  // namespace gpt_fast::cuda
