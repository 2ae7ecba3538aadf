// CUDA kernel body for gpt_fast::flash_attention_train: the causal attention of flash_attention_fp32.cuh for every
// input dtype (fp32 / bf16 / fp16 read and converted to fp32 in shared memory, fp32 math), which also writes each
// row's log-sum-exp in base 2 and drops probabilities inside the kernel.
//
// One block of 4 warps per (16-query tile, batch x head); 32-key tiles of K and V staged in shared memory; each
// warp owns 4 query rows, lane j scores key j of the tile (flash_train_common.cuh's row_dot: the backward
// recomputes the same value), the output row is spread over the lanes (WarpRowState). Dropout: lane j's
// probability of query i is kept when philox::keep(seed, ((b H + h) T + i) T + key, threshold) (csrc/philox.h);
// the row sums, and lse, are those of the undropped probabilities, and kept values are scaled by 1 / (1 - p) with
// the row's 1 / sum at the end, as the CPU kernel (csrc/cpu/flash_kernel.h) does.
//   lse[b, h, i] = m + log2(l) (the running max and sum in base 2); -inf for a row with no key to attend, whose
//   output is zeros.
// Any head size 1..128 (padded to DP = 64 or 128 with zeros); contiguous tensors. No torch header.
#pragma once
#include "flash_train_common.cuh"
#include "warp_softmax.cuh"

namespace gpt_fast::cuda {

constexpr int kFtBlockM = 16;  // query rows per block (4 per warp)
constexpr int kFtBlockN = 32;  // keys per tile (one per lane)
constexpr int kFtThreads = 128;

template <typename Elem, int DP>
__global__ void __launch_bounds__(kFtThreads) flash_train_forward_kernel(TrainArgs<Elem> a, Elem* out, float* lse) {
  constexpr int kRows = kFtBlockM / (kFtThreads / kWarp);
  __shared__ float sQ[kFtBlockM][DP];      // (rows, D), zeros past T and D
  __shared__ float sK[kFtBlockN][DP + 1];  // (keys, D), odd stride: lane j reads row j conflict-free
  __shared__ float sV[kFtBlockN][DP];      // (keys, D)
  __shared__ uint8_t sAllow[kFtBlockN];

  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kFtBlockM;  // longest (last) query tiles start first
  const int bh = blockIdx.y, b = bh / a.H, h = bh % a.H;
  const int64_t C = static_cast<int64_t>(a.H) * a.D, row_stride = 3 * C;
  const Elem* q_base = a.qkv + static_cast<int64_t>(b) * a.T * row_stride + h * a.D;  // (T, D), row_stride
  const Elem* k_base = q_base + C;
  const Elem* v_base = q_base + 2 * C;
  const int Dr = round_up8(a.D);

  stage_rows<kFtThreads, DP>(&sQ[0][0], DP, q_base, row_stride, m0, kFtBlockM, a.T, a.D);
  WarpRowState<DP> st[kRows];

  const int key_end = min(a.T, m0 + kFtBlockM);
  for (int n0 = 0; n0 < key_end; n0 += kFtBlockN) {
    stage_rows<kFtThreads, DP>(&sK[0][0], DP + 1, k_base, row_stride, n0, kFtBlockN, a.T, a.D);
    stage_rows<kFtThreads, DP>(&sV[0][0], DP, v_base, row_stride, n0, kFtBlockN, a.T, a.D);
    if (threadIdx.x < kFtBlockN) sAllow[threadIdx.x] = key_allowed(a, b, n0 + threadIdx.x);
    GF_SYNC_DROP(11);  // the tile (and, the first time, Q) has landed
    const int n_valid = min(kFtBlockN, a.T - n0);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = warp * kRows + i, q = m0 + r, key = n0 + lane;
      float score = -INFINITY, keep = 1.f;
      if (q < a.T && key <= q && sAllow[lane]) {
        score = score_of(row_dot(sQ[r], sK[lane], Dr), a.scale_log2);
        keep = drop_factor(a, bh, q, key) != 0.f ? 1.f : 0.f;
      }
      st[i].update(score, n_valid, a.D, [&](int j, int d) { return sV[j][d]; }, keep);
    }
    GF_SYNC_DROP(12);  // everyone is done with sK / sV before the next tile overwrites them
  }

  Elem* out_base = out + static_cast<int64_t>(b) * a.T * C + h * a.D;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int q = m0 + warp * kRows + i;
    if (q >= a.T) continue;
    const float l = st[i].l;  // the same in every lane (warp-reduced)
    const float inv = l > 0.f ? a.keep_scale / l : 0.f;
    if (lane == 0) lse[static_cast<int64_t>(bh) * a.T + q] = l > 0.f ? st[i].m + log2f(l) : (l == 0.f ? -INFINITY : l);
#pragma unroll
    for (int j = 0; j < DP / 32; ++j) {
      const int d = lane + 32 * j;
      if (d < a.D) out_base[q * C + d] = from_float<Elem>(st[i].o[j] * inv);
    }
  }
}

}  // namespace gpt_fast::cuda
