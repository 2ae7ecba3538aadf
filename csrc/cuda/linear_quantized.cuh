// CUDA kernel body for gpt_fast::linear_quantized: out = [gelu_tanh](x @ W.T + bias) [+ residual] for few rows,
// W weight-only int8 / int4 in the packed layout of csrc/cpu/quantized_layout.h (the same bytes as on the CPU).
//
// One thread block per (16-column block, tile of up to MR rows): its kQThreads threads stride over the block's byte
// stream one 16-byte row at a time (consecutive threads, consecutive rows: coalesced 128-bit loads), dequantize the
// row in registers to 16 fp32 weights and FMA them with x[m, k] of every row of the tile into acc[MR][16]:
//   bits 8: row k = 16 int8 weights; the per-column fp32 scale multiplies the reduced sums at the end.
//   bits 4: row = one k pair of group g (16 bytes, low nibble k = 2p); w = q * scale + zero with the group's bf16
//           scales and zeros (64 bytes after the group's nibbles, read from L1 by the threads of that group).
// The per-thread sums are reduced through shared memory ((threads, MR * 16 + 1) fp32, padded against bank
// conflicts; 8 interleaved sums and a pairwise tree), then thread (m, c) applies the scale (int8), bias, GELU,
// residual and stores. All math fp32.
// x, residual, out: (M, K) / (M, N) contiguous rows (residual rows ld_residual apart). No torch header.
#pragma once
#include <cstring>

#include "bias_gelu.cuh"  // gelu_tanh
#include "common.cuh"
#include "../cpu/quantized_layout.h"  // relative: the CMake gate has no csrc include path

namespace gpt_fast::cuda {

constexpr int kQThreads = 128;

// fp32 from its bits (memcpy: works under nvcc and the SIMT layer alike, which lacks __uint_as_float).
__device__ inline float bits_to_float(unsigned bits) {
  float v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}
__device__ inline float bf16_bits_to_float(unsigned short bits) { return bits_to_float(static_cast<unsigned>(bits) << 16); }

// Row r of a block's byte stream dequantized into w[16] and the k it multiplies (k1 = -1 for int8, whose row is one k).
template <int BITS>
__device__ inline void dequantize_row(const uint8_t* block, int64_t r, int K, int G, float* w, int64_t& k0,
                                      int64_t& k1) {
  if constexpr (BITS == 8) {
    Vec<int8_t> q;
    q.raw = *reinterpret_cast<const uint4*>(block + r * 16);
#pragma unroll
    for (int c = 0; c < 16; ++c) w[c] = static_cast<float>(q.e[c]);
    k0 = r, k1 = -1;
  } else {
    const int64_t pairs = G / 2, g = r / pairs, p = r % pairs;
    const uint8_t* group = block + g * quant::group_bytes4(G);
    Vec<uint8_t> q;
    q.raw = *reinterpret_cast<const uint4*>(group + p * 16);
    const auto* tail = reinterpret_cast<const unsigned short*>(group + 8 * G);  // 16 scales, 16 zeros (bf16 bits)
#pragma unroll
    for (int c = 0; c < 16; ++c) {
      const float s = bf16_bits_to_float(tail[c]), z = bf16_bits_to_float(tail[16 + c]);
      w[c] = static_cast<float>(q.e[c] & 0xF) * s + z;       // k = g G + 2 p
      w[16 + c] = static_cast<float>(q.e[c] >> 4) * s + z;   // k = g G + 2 p + 1
    }
    k0 = g * G + 2 * p, k1 = k0 + 1;
  }
}

// The kQThreads partial sums of output i: 8 interleaved running sums, then a pairwise tree of those 8, so the error
// grows with kQThreads / 8 + 3 additions rather than kQThreads (a plain running sum lost ~5 ulp at K = 300).
template <int kOut>
__device__ __forceinline__ float reduce_partials(const float (*partial)[kOut + 1], int i) {
  static_assert(kQThreads % 8 == 0, "8 interleaved sums");
  float s[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) s[j] = partial[j][i];
  for (int t = 8; t < kQThreads; t += 8)
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] += partial[t + j][i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// grid: (NB blocks, row tiles); block: kQThreads.
template <typename T, int BITS, int MR>
__global__ void __launch_bounds__(kQThreads)
    linear_quantized_kernel(const T* x, const uint8_t* packed, const T* bias, const T* residual, T* out, int64_t M,
                            int K, int64_t N, int G, int64_t block_bytes, int64_t ld_residual, bool gelu) {
  constexpr int kOut = MR * 16;
  __shared__ float partial[kQThreads][kOut + 1];  // (threads, MR x 16), +1: no bank conflicts on the writes
  const int64_t b = blockIdx.x;
  const uint8_t* block = packed + b * block_bytes;
  const int64_t rows = BITS == 8 ? K : K / 2;  // 16-byte rows of weights in the stream
  const int t = threadIdx.x;
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * MR; m0 < M; m0 += static_cast<int64_t>(gridDim.y) * MR) {
    const int mr = static_cast<int>(M - m0 < MR ? M - m0 : MR);
    float acc[MR][16];
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      for (int c = 0; c < 16; ++c) acc[m][c] = 0.f;
    for (int64_t r = t; r < rows; r += kQThreads) {
      float w[BITS == 8 ? 16 : 32];
      int64_t k0, k1;
      dequantize_row<BITS>(block, r, K, G, w, k0, k1);
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        if (m < mr) {
          const float x0 = to_float(x[(m0 + m) * K + k0]);
#pragma unroll
          for (int c = 0; c < 16; ++c) acc[m][c] = fmaf(w[c], x0, acc[m][c]);
          if constexpr (BITS == 4) {
            const float x1 = to_float(x[(m0 + m) * K + k1]);
#pragma unroll
            for (int c = 0; c < 16; ++c) acc[m][c] = fmaf(w[16 + c], x1, acc[m][c]);
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      for (int c = 0; c < 16; ++c) partial[t][m * 16 + c] = acc[m][c];
    __syncthreads();
    for (int i = t; i < mr * 16; i += kQThreads) {
      const int m = i / 16, c = i % 16;
      const int64_t n = b * 16 + c;
      float v = reduce_partials<kOut>(partial, i);
      if (n < N) {
        if constexpr (BITS == 8) v *= bits_to_float(*reinterpret_cast<const unsigned*>(block + K * 16 + 4 * c));
        if (bias) v += to_float(bias[n]);
        if (gelu) v = gelu_tanh(v);
        if (residual) v += to_float(residual[(m0 + m) * ld_residual + n]);
        out[(m0 + m) * N + n] = from_float<T>(v);
      }
    }
    __syncthreads();  // partial is rewritten by the next row tile
  }
}

}  // namespace gpt_fast::cuda
