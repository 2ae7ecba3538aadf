// The packed layout of a weight-only quantized linear weight, shared by gpt_fast::pack_quantized_weight (which makes
// it, on qweight's device), gpt_fast::linear_quantized's CPU kernels (csrc/cpu/linear_quantized*.cpp) and its CUDA
// kernel (csrc/cuda/linear_quantized.cuh). Torch-free, so that nvcc and the SIMT harness can include it.
//
// The logical format (gpt_fast/ops/reference.py) is per output column n of W (N, K) = (out_features, in_features):
//   bits 8: q int8 (N, K), scale fp32 (N,);                   W[n, k] = q[n, k] * scale[n]
//   bits 4: q 4-bit (N, K), scale and zero bf16 (N, K / G);   W[n, k] = q[n, k] * scale[n, g] + zero[n, g], g = k / G
// Packed, columns go in blocks of 16 (as linear_small_m's, csrc/cpu/linear_layout.h), each block one contiguous
// byte stream that carries everything the kernel needs for its 16 columns, in the order it reads them:
//   bits 8: uint8 (NB, K + 4, 16): rows 0..K-1 hold q[16 b + j, k] (int8 bytes) for j = 0..15; rows K..K+3 hold the
//           16 fp32 scales (64 bytes, little-endian).
//   bits 4: uint8 (NB, K / G, 8 G + 64): group g of block b is 8 G bytes of nibbles, G / 2 rows of 16 bytes, byte j
//           of row p = q[16 b + j, g G + 2 p] | q[16 b + j, g G + 2 p + 1] << 4 (the two k of a pair in one byte,
//           one byte per column), then the 16 bf16 scales (32 bytes) and the 16 bf16 zeros (32 bytes) of the group.
// The shape pins down bits and G given K (int8 rows are 16 bytes, an int4 group 8 G + 64 > 16), so linear_quantized
// checks them against its arguments. N is pinned down by the padding, as linear_small_m's: the columns past N have
// q = 0, scale 0 and a marker of -0.0 (int8: its scale; int4: its zero of group 0), and the pack turns every -0.0
// scale (int8) or zero (int4) of the weight itself into +0.0 (which changes no product).
#pragma once
#include <cstdint>

namespace gpt_fast::quant {

constexpr int64_t kBlockN = 16;          // output columns per block
constexpr int64_t kScaleRows8 = 4;       // int8: 16 fp32 scales = 4 rows of 16 bytes after the K weight rows
constexpr int64_t kGroupTail4 = 64;      // int4: 16 bf16 scales + 16 bf16 zeros after each group's nibbles
constexpr uint32_t kMinusZeroF32 = 0x80000000u;
constexpr uint16_t kMinusZeroBf16 = 0x8000u;

// ceil(N / 16) without overflow near INT64_MAX (N >= 0).
constexpr int64_t blocks(int64_t N) { return N / kBlockN + (N % kBlockN != 0); }

// The packed tensor's last two dimensions for given K, bits and G (the caller has checked bits, K % G, G even);
// constexpr so that device code (nvcc --expt-relaxed-constexpr) can call them.
constexpr int64_t rows8(int64_t K) { return K + kScaleRows8; }
constexpr int64_t group_bytes4(int64_t G) { return 8 * G + kGroupTail4; }

}  // namespace gpt_fast::quant
