// CUDA kernel body for gpt_fast::flash_attention with fp32 inputs: the same causal attention as
// flash_attention.cuh (same arguments, masking and zero rows) on plain fp32 cores. One block of 4 warps per
// (16-query tile, batch x head); 32-key tiles of K and V staged in shared memory; each warp owns 4 query rows,
// lane j scores key j of the tile, the output row is spread over the lanes (WarpRowState).
// Limits: D % 8 == 0, D <= DP (64 or 128), contiguous tensors. No torch header.
#pragma once
#include "flash_attention.cuh"
#include "warp_softmax.cuh"

namespace gpt_fast::cuda {

constexpr int kFa32BlockM = 16;  // query rows per block (4 per warp)
constexpr int kFa32BlockN = 32;  // keys per tile (one per lane)
constexpr int kFa32Threads = 128;

template <int DP>
__global__ void __launch_bounds__(kFa32Threads) flash_attention_fp32_kernel(AttentionArgs<float> a) {
  constexpr int kRows = kFa32BlockM / (kFa32Threads / kWarp);
  __shared__ float sQ[kFa32BlockM][DP];          // (rows, D)
  __shared__ float sK[kFa32BlockN][DP + 1];      // (keys, D), odd stride: lane j reads row j conflict-free
  __shared__ float sV[kFa32BlockN][DP];          // (keys, D)
  __shared__ uint8_t sAllow[kFa32BlockN];

  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kFa32BlockM;
  const int b = blockIdx.y / a.H, h = blockIdx.y % a.H;
  const int64_t C = static_cast<int64_t>(a.H) * a.D, row_stride = 3 * C;
  const float* q_base = a.qkv + static_cast<int64_t>(b) * a.T * row_stride + h * a.D;  // (T, D), row_stride
  const float* k_base = q_base + C;
  const float* v_base = q_base + 2 * C;

  for (int idx = threadIdx.x; idx < kFa32BlockM * DP; idx += kFa32Threads) {
    const int r = idx / DP, c = idx % DP, q = m0 + r;
    sQ[r][c] = (q < a.T && c < a.D) ? q_base[q * row_stride + c] : 0.f;
  }
  WarpRowState<DP> st[kRows];

  const int key_end = min(a.T, m0 + kFa32BlockM);
  for (int n0 = 0; n0 < key_end; n0 += kFa32BlockN) {
    for (int idx = threadIdx.x; idx < kFa32BlockN * DP; idx += kFa32Threads) {
      const int r = idx / DP, c = idx % DP, key = n0 + r;
      const bool in = key < a.T && c < a.D;
      sK[r][c] = in ? k_base[key * row_stride + c] : 0.f;
      sV[r][c] = in ? v_base[key * row_stride + c] : 0.f;
    }
    if (threadIdx.x < kFa32BlockN) {
      const int key = n0 + threadIdx.x;
      sAllow[threadIdx.x] = key < a.T && (a.allow == nullptr || a.allow[static_cast<int64_t>(b) * a.T + key] != 0);
    }
    GF_SYNC_DROP(1);
    const int n_valid = min(kFa32BlockN, a.T - n0);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = warp * kRows + i, q = m0 + r, key = n0 + lane;
      float score = -INFINITY;
      if (key <= q && sAllow[lane]) {
        float acc[8] = {};
        for (int d = 0; d < a.D; d += 8)  // D % 8 == 0
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[j] = fmaf(sQ[r][d + j], sK[lane][d + j], acc[j]);
        score = tree_sum8(acc) * a.scale_log2;
      }
      st[i].update(score, n_valid, a.D, [&](int j, int d) { return sV[j][d]; });
    }
    GF_SYNC_DROP(2);
  }

  float* out_base = a.out + static_cast<int64_t>(b) * a.T * C + h * a.D;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int q = m0 + warp * kRows + i;
    if (q >= a.T) continue;
    const float inv = st[i].l > 0.f ? 1.f / st[i].l : 0.f;
#pragma unroll
    for (int j = 0; j < DP / 32; ++j) {
      const int d = lane + 32 * j;
      if (d < a.D) out_base[q * C + d] = st[i].o[j] * inv;
    }
  }
}

}  // namespace gpt_fast::cuda
