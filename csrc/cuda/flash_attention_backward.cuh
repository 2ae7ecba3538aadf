// CUDA kernel bodies for gpt_fast::flash_attention_backward: the gradient of flash_attention_train
// (flash_attention_train.cuh) with respect to the packed qkv, FlashAttention-2 style, on fp32 cores for every
// input dtype. The probabilities are recomputed from the forward's base-2 log-sum-exp, never stored:
//   S = q . k log2(e) / sqrt(D) (row_dot: the forward's exact value), P = exp2(S - lse) (0 where masked: causal,
//   key padding, or a row with nothing to attend), Z = the forward's dropout factor (1 / (1 - p) or 0, the same
//   Philox element), dP = dO . v, dS = P (dP Z - Delta) with Delta = rowsum(dO * O);
//   dV = sum_i P Z dO_i, dK = sum_i dS q_i / sqrt(D), dQ = sum_j dS k_j / sqrt(D).
// Three kernels, no atomics (deterministic: every sum runs in a fixed order):
//   flash_backward_delta_kernel  one thread per query row: Delta into an fp32 workspace (B, H, T);
//   flash_backward_dkdv_kernel   one block per (key tile, batch x head), each warp owning 4 keys (2 for D > 64)
//                                with their dK and dV rows in registers (lane owns dims lane + 32 c), over 32-query
//                                tiles at or after the keys (lane i scores query i);
//   flash_backward_dq_kernel     one block per (query tile, batch x head), each warp owning 4 query rows (2 for
//                                D > 64) with their dQ rows in registers, over 32-key tiles (lane j scores key j).
// S and dP are computed twice (once per pass) instead of summing dQ with atomics. Layout: qkv and grad_qkv
// (B, T, 3C), grad_out and out (B, T, C), lse (B, H, T), all contiguous; any head size 1..128. No torch header.
#pragma once
#include "flash_train_common.cuh"

namespace gpt_fast::cuda {

constexpr int kFbThreads = 128;
constexpr int kFbTile = 32;  // the lane-indexed tile: queries (dK/dV pass) or keys (dQ pass)

// Rows each warp owns in the dK/dV pass (keys) and the dQ pass (queries): fewer for DP = 128 so that the block's
// shared memory stays within the 48 KB of static shared memory.
__host__ __device__ constexpr int fb_rows_per_warp(int DP) { return DP <= 64 ? 4 : 2; }
__host__ __device__ constexpr int fb_block_rows(int DP) { return fb_rows_per_warp(DP) * (kFbThreads / kWarp); }

template <typename Elem>
struct BackwardArgs {
  TrainArgs<Elem> a;     // qkv, mask, shape, dropout
  const Elem* grad_out;  // (B, T, C)
  const Elem* out;       // (B, T, C)
  const float* lse;      // (B, H, T), base 2
  float* delta;          // (B, H, T) workspace
  Elem* grad_qkv;        // (B, T, 3C)
  float inv_sqrt_d;
};

template <typename Elem>
__global__ void __launch_bounds__(kFbThreads) flash_backward_delta_kernel(BackwardArgs<Elem> g) {
  const TrainArgs<Elem>& a = g.a;
  const int i = blockIdx.x * kFbThreads + threadIdx.x, bh = blockIdx.y, b = bh / a.H, h = bh % a.H;
  if (i >= a.T) return;
  const int64_t C = static_cast<int64_t>(a.H) * a.D, at = (static_cast<int64_t>(b) * a.T + i) * C + h * a.D;
  const Elem *go = g.grad_out + at, *o = g.out + at;
  const int D = a.D;
  // the dP pass's row_dot with the same values (zeros past D): a row whose output is one value row gets dP = Delta
  g.delta[static_cast<int64_t>(bh) * a.T + i] =
      row_dot_at([&](int d) { return d < D ? to_float(go[d]) : 0.f; }, [&](int d) { return d < D ? to_float(o[d]) : 0.f; },
                 round_up8(D));
}

template <typename Elem, int DP>
__global__ void __launch_bounds__(kFbThreads) flash_backward_dkdv_kernel(BackwardArgs<Elem> g) {
  constexpr int kKpw = fb_rows_per_warp(DP), kKeys = fb_block_rows(DP);
  __shared__ float sK[kKeys][DP];             // (keys, D): broadcast reads
  __shared__ float sV[kKeys][DP];
  __shared__ float sQ[kFbTile][DP + 1];       // (queries, D), odd stride: lane i reads row i conflict-free
  __shared__ float sG[kFbTile][DP + 1];       // dO of the queries
  __shared__ float sLse[kFbTile], sDelta[kFbTile];
  __shared__ uint8_t sAllow[kKeys];

  const TrainArgs<Elem>& a = g.a;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int k0 = blockIdx.x * kKeys;  // the first key tiles have the most queries and are scheduled first
  const int bh = blockIdx.y, b = bh / a.H, h = bh % a.H;
  const int64_t C = static_cast<int64_t>(a.H) * a.D, row_stride = 3 * C;
  const Elem* q_base = a.qkv + static_cast<int64_t>(b) * a.T * row_stride + h * a.D;  // (T, D), row_stride
  const Elem* g_base = g.grad_out + static_cast<int64_t>(b) * a.T * C + h * a.D;      // (T, D), stride C
  const int Dr = round_up8(a.D);

  stage_rows<kFbThreads, DP>(&sK[0][0], DP, q_base + C, row_stride, k0, kKeys, a.T, a.D);
  stage_rows<kFbThreads, DP>(&sV[0][0], DP, q_base + 2 * C, row_stride, k0, kKeys, a.T, a.D);
  if (threadIdx.x < kKeys) sAllow[threadIdx.x] = key_allowed(a, b, k0 + threadIdx.x);
  float dk[kKpw][DP / 32] = {}, dv[kKpw][DP / 32] = {};

  for (int i0 = k0; i0 < a.T; i0 += kFbTile) {  // causal: queries before k0 see none of the block's keys
    stage_rows<kFbThreads, DP>(&sQ[0][0], DP + 1, q_base, row_stride, i0, kFbTile, a.T, a.D);
    stage_rows<kFbThreads, DP>(&sG[0][0], DP + 1, g_base, C, i0, kFbTile, a.T, a.D);
    if (threadIdx.x < kFbTile) {
      const int i = i0 + threadIdx.x;
      const int64_t row = static_cast<int64_t>(bh) * a.T + i;
      sLse[threadIdx.x] = i < a.T ? g.lse[row] : 0.f;
      sDelta[threadIdx.x] = i < a.T ? g.delta[row] : 0.f;
    }
    GF_SYNC_DROP(13);  // the query tile (and, the first time, the key block) has landed
    const int i = i0 + lane, n_valid = min(kFbTile, a.T - i0);
#pragma unroll
    for (int r = 0; r < kKpw; ++r) {
      const int kl = warp * kKpw + r, key = k0 + kl;
      float pz = 0.f, ds = 0.f;  // this lane's query: P Z and dS against key `key`
      if (i < a.T && key <= i && sAllow[kl]) {
        const float p = exp2f(score_of(row_dot(sQ[lane], sK[kl], Dr), a.scale_log2) - sLse[lane]);
        const float z = drop_factor(a, bh, i, key);
        const float dp = row_dot(sG[lane], sV[kl], Dr);
        pz = p * z;
        ds = p * (dp * z - sDelta[lane]);
      }
      for (int j = 0; j < n_valid; ++j) {
        const float pzj = __shfl_sync(kFullMask, pz, j), dsj = __shfl_sync(kFullMask, ds, j);
#pragma unroll
        for (int c = 0; c < DP / 32; ++c) {
          dv[r][c] = fmaf(pzj, sG[j][lane + 32 * c], dv[r][c]);
          dk[r][c] = fmaf(dsj, sQ[j][lane + 32 * c], dk[r][c]);
        }
      }
    }
    GF_SYNC_DROP(14);  // everyone is done with the query tile before the next one overwrites it
  }

#pragma unroll
  for (int r = 0; r < kKpw; ++r) {
    const int key = k0 + warp * kKpw + r;
    if (key >= a.T) continue;
    Elem* grad = g.grad_qkv + (static_cast<int64_t>(b) * a.T + key) * row_stride + h * a.D;
#pragma unroll
    for (int c = 0; c < DP / 32; ++c) {
      const int d = lane + 32 * c;
      if (d >= a.D) continue;
      grad[C + d] = from_float<Elem>(dk[r][c] * g.inv_sqrt_d);
      grad[2 * C + d] = from_float<Elem>(dv[r][c]);
    }
  }
}

template <typename Elem, int DP>
__global__ void __launch_bounds__(kFbThreads) flash_backward_dq_kernel(BackwardArgs<Elem> g) {
  constexpr int kRows = fb_rows_per_warp(DP), kQueries = fb_block_rows(DP);
  __shared__ float sQ[kQueries][DP];          // (queries, D): broadcast reads
  __shared__ float sG[kQueries][DP];          // dO of the queries
  __shared__ float sK[kFbTile][DP + 1];       // (keys, D), odd stride: lane j reads row j conflict-free
  __shared__ float sV[kFbTile][DP + 1];
  __shared__ uint8_t sAllow[kFbTile];

  const TrainArgs<Elem>& a = g.a;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kQueries;  // longest (last) query tiles start first
  const int bh = blockIdx.y, b = bh / a.H, h = bh % a.H;
  const int64_t C = static_cast<int64_t>(a.H) * a.D, row_stride = 3 * C;
  const Elem* q_base = a.qkv + static_cast<int64_t>(b) * a.T * row_stride + h * a.D;
  const Elem* g_base = g.grad_out + static_cast<int64_t>(b) * a.T * C + h * a.D;
  const int Dr = round_up8(a.D);

  stage_rows<kFbThreads, DP>(&sQ[0][0], DP, q_base, row_stride, m0, kQueries, a.T, a.D);
  stage_rows<kFbThreads, DP>(&sG[0][0], DP, g_base, C, m0, kQueries, a.T, a.D);
  float lse[kRows], delta[kRows], dq[kRows][DP / 32] = {};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int q = m0 + warp * kRows + r;
    const int64_t row = static_cast<int64_t>(bh) * a.T + q;
    lse[r] = q < a.T ? g.lse[row] : 0.f;
    delta[r] = q < a.T ? g.delta[row] : 0.f;
  }

  const int key_end = min(a.T, m0 + kQueries);
  for (int n0 = 0; n0 < key_end; n0 += kFbTile) {
    stage_rows<kFbThreads, DP>(&sK[0][0], DP + 1, q_base + C, row_stride, n0, kFbTile, a.T, a.D);
    stage_rows<kFbThreads, DP>(&sV[0][0], DP + 1, q_base + 2 * C, row_stride, n0, kFbTile, a.T, a.D);
    if (threadIdx.x < kFbTile) sAllow[threadIdx.x] = key_allowed(a, b, n0 + threadIdx.x);
    GF_SYNC_DROP(15);  // the key tile (and, the first time, the query rows) has landed
    const int key = n0 + lane, n_valid = min(kFbTile, a.T - n0);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int rl = warp * kRows + r, q = m0 + rl;
      float ds = 0.f;  // dS of this row against this lane's key
      if (q < a.T && key <= q && sAllow[lane]) {
        const float p = exp2f(score_of(row_dot(sQ[rl], sK[lane], Dr), a.scale_log2) - lse[r]);
        const float z = drop_factor(a, bh, q, key);
        ds = p * (row_dot(sG[rl], sV[lane], Dr) * z - delta[r]);
      }
      for (int j = 0; j < n_valid; ++j) {
        const float dsj = __shfl_sync(kFullMask, ds, j);
#pragma unroll
        for (int c = 0; c < DP / 32; ++c) dq[r][c] = fmaf(dsj, sK[j][lane + 32 * c], dq[r][c]);
      }
    }
    GF_SYNC_DROP(16);  // everyone is done with sK / sV before the next tile overwrites them
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int q = m0 + warp * kRows + r;
    if (q >= a.T) continue;
    Elem* grad = g.grad_qkv + (static_cast<int64_t>(b) * a.T + q) * row_stride + h * a.D;
#pragma unroll
    for (int c = 0; c < DP / 32; ++c) {
      const int d = lane + 32 * c;
      if (d < a.D) grad[d] = from_float<Elem>(dq[r][c] * g.inv_sqrt_d);
    }
  }
}

}  // namespace gpt_fast::cuda
