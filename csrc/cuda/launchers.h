// Torch-free host entry points of the gpt_fast CUDA kernels (implemented in csrc/cuda/*.cu).
// Pointers are raw device pointers to contiguous tensors; each launcher enqueues on `stream` and returns the
// launch error (cudaSuccess when the launch was accepted). Shape limits are checked by the caller
// (csrc/cuda/bindings.cpp); the launchers only pick the kernel variant and the grid.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace gpt_fast::cuda {

// Which element type a launcher was called with (the launchers take this instead of c10 types).
enum class DType { kFloat32, kBFloat16, kFloat16 };

// x, residual, out: (rows, C); bias (nullable), weight, ln_bias: (C,); dropout_p in [0, 1) (checked by the
// caller) drops elements of residual + bias under Philox's mask for seed (csrc/philox.h).
cudaError_t launch_add_layernorm(DType dtype, const void* x, const void* residual, const void* bias,
                                 const void* weight, const void* ln_bias, void* out, int64_t rows, int C, float eps,
                                 double dropout_p, uint64_t seed, cudaStream_t stream);

// x, out: (total / N, N); bias: (N,).
cudaError_t launch_bias_gelu(DType dtype, const void* x, const void* bias, void* out, int64_t total, int64_t N,
                             cudaStream_t stream);

// --- backward ops (issue 13) ---
// grad_out, x, grad_x: (total / N, N); bias: (N,).
cudaError_t launch_bias_gelu_backward(DType dtype, const void* grad_out, const void* x, const void* bias,
                                      void* grad_x, int64_t total, int64_t N, cudaStream_t stream);
// Bytes of float scratch launch_add_layernorm_backward needs for rows of C (partial column sums).
size_t add_layernorm_backward_workspace_bytes(int64_t rows, int C);
// grad_out, x, residual, grad_v: (rows, C); bias (nullable), weight, grad_weight, grad_ln_bias: (C,);
// workspace: add_layernorm_backward_workspace_bytes(rows, C) bytes, 4-byte aligned. With dropout_p > 0 (the
// forward's p and seed) grad_residual (rows, C) gets grad_v * keep / (1 - p); it is not touched with p = 0.
cudaError_t launch_add_layernorm_backward(DType dtype, const void* grad_out, const void* x, const void* residual,
                                          const void* bias, const void* weight, void* grad_v, void* grad_weight,
                                          void* grad_ln_bias, void* grad_residual, void* workspace, int64_t rows,
                                          int C, float eps, double dropout_p, uint64_t seed, cudaStream_t stream);
// --- end of backward ops ---

// Largest head size the attention kernels take; D must also be a multiple of 8.
constexpr int kMaxHeadDim = 128;

// qkv: (B, T, 3 * H * D); key_padding_mask: (B, T) bytes (nonzero = attend) or nullptr; out: (B, T, H * D).
cudaError_t launch_flash_attention(DType dtype, const void* qkv, const uint8_t* key_padding_mask, void* out, int B,
                                   int T, int H, int D, cudaStream_t stream);

// --- training attention (issue 13): any head size 1..kMaxHeadDim; dropout_p in [0, 1) (checked by the caller) ---
// qkv: (B, T, 3 * H * D); key_padding_mask: (B, T) bytes or nullptr; out: (B, T, H * D); lse: (B, H, T) float,
// each row's log-sum-exp in base 2 (-inf for a row with nothing to attend). Probabilities dropped under Philox's
// mask for seed (csrc/philox.h: element ((b H + h) T + i) T + j).
cudaError_t launch_flash_attention_train(DType dtype, const void* qkv, const uint8_t* key_padding_mask, void* out,
                                         float* lse, int B, int T, int H, int D, double dropout_p, uint64_t seed,
                                         cudaStream_t stream);
// Bytes of float scratch launch_flash_attention_backward needs (Delta = rowsum(dO * O) per row).
size_t flash_attention_backward_workspace_bytes(int B, int T, int H);
// grad_out, out: (B, T, H * D); qkv, grad_qkv: (B, T, 3 * H * D); lse: the forward's; the forward's dropout_p and
// seed. Writes every element of grad_qkv.
cudaError_t launch_flash_attention_backward(DType dtype, const void* grad_out, const void* qkv, const void* out,
                                            const float* lse, const uint8_t* key_padding_mask, void* grad_qkv,
                                            void* workspace, int B, int T, int H, int D, double dropout_p,
                                            uint64_t seed, cudaStream_t stream);

// How decode attention splits each row's cached keys over blocks (flash-decoding) so that B * H blocks that
// cannot fill the GPU become B * H * splits; workspace_bytes of float scratch are needed when splits > 1.
struct DecodePlan {
  int splits;
  int chunk;  // keys per split, a multiple of 32
  size_t workspace_bytes;
};
DecodePlan plan_decode_attention(int B, int S, int H, int D, int Tmax, int sm_count);

// qkv: (B, S, 3 * H * D); k_cache, v_cache: (B, H, Tmax, D), written at [len_b, len_b + S);
// cache_lengths: (B,) int64 with 0 <= len_b and len_b + S <= Tmax; out: (B, S, H * D).
cudaError_t launch_decode_attention(DType dtype, const DecodePlan& plan, const void* qkv, void* k_cache,
                                    void* v_cache, const int64_t* cache_lengths, void* out, void* workspace, int B,
                                    int S, int H, int D, int Tmax, cudaStream_t stream);

// Weight-only quantized linear (csrc/cpu/quantized_layout.h): x (M, K); packed (ceil(N / 16), ...) bytes for bits 8
// or 4 (group size G); bias (N,) or nullptr; residual (M, N) rows ld_residual apart, or nullptr; out (M, N). Needs
// grid.x = ceil(N / 16) < 2^31 (checked by the binding).
cudaError_t launch_linear_quantized(DType dtype, const void* x, const uint8_t* packed, const void* bias,
                                    const void* residual, void* out, int64_t M, int K, int64_t N, int bits, int G,
                                    int64_t ld_residual, bool gelu, cudaStream_t stream);

}  // namespace gpt_fast::cuda
