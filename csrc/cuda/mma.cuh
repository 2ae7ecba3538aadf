// The tensor-core product D = A * B + D for one warp, mma.sync m16n8k16 with bf16 or fp16 inputs and fp32
// accumulation, plus the packing helpers for its fragments. Register layout (PTX ISA, per lane, g = lane / 4,
// t = lane % 4): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..];
// b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]; c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1].
// Under the SIMT test layer (GF_SIMT) the product is computed lane by lane from shuffled fragments instead.
#pragma once
#include <type_traits>

#include "common.cuh"

namespace gpt_fast::cuda {

template <typename T>
__device__ inline uint32_t pack2(float lo, float hi) {
  union {
    T h[2];
    uint32_t u;
  } p;
  p.h[0] = from_float<T>(lo);
  p.h[1] = from_float<T>(hi);
  return p.u;
}

template <typename T>
__device__ inline uint32_t pack2(T lo, T hi) {
  union {
    T h[2];
    uint32_t u;
  } p;
  p.h[0] = lo;
  p.h[1] = hi;
  return p.u;
}

template <typename T>
__device__ inline void unpack2(uint32_t u, float& lo, float& hi) {
  union {
    T h[2];
    uint32_t u;
  } p;
  p.u = u;
  lo = to_float(p.h[0]);
  hi = to_float(p.h[1]);
}

template <typename T>
__device__ inline void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#ifndef GF_SIMT
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<T, __half>, "mma_16816 takes bf16 or fp16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  // Scalar fallback (SIMT test layer only): gather the warp's fragments, then this lane's two rows of A (held by
  // the lanes with the same g) times its two columns of B (held by the lanes whose g is the column), in fp32.
  struct Frag {
    uint32_t a[4], b[2];
  };
  Frag all[kWarp];
  gf_simt::warp_gather(Frag{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}}, all);
  const int lane = threadIdx.x % kWarp, g = lane / 4, t = lane % 4;
  float A[2][16], B[2][16];
  for (int s = 0; s < 4; ++s) {
    for (int r = 0; r < 4; ++r) {
      const int k = 2 * s + (r >= 2 ? 8 : 0);
      unpack2<T>(all[g * 4 + s].a[r], A[r & 1][k], A[r & 1][k + 1]);
    }
    for (int j = 0; j < 2; ++j)
      for (int r = 0; r < 2; ++r) unpack2<T>(all[(2 * t + j) * 4 + s].b[r], B[j][2 * s + 8 * r], B[j][2 * s + 8 * r + 1]);
  }
  for (int row = 0; row < 2; ++row)
    for (int j = 0; j < 2; ++j) {
      float acc = c[row * 2 + j];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[j][k];
      c[row * 2 + j] = acc;
    }
#endif
}

}  // namespace gpt_fast::cuda
