// CUDA kernel body for gpt_fast::flash_attention with bf16/fp16 inputs: causal self-attention on the packed
// c_attn output, FlashAttention-2 style. One block of 4 warps per (64-query tile, batch x head); each warp owns 16
// query rows, keeps its Q fragments and fp32 output accumulator in registers and walks the 64-key tiles up to
// the diagonal. K and V tiles are staged in shared memory by cp.async (double-buffered for DP = 64: the next
// tile loads while this one is used; single buffer for DP = 128, within the 48 KB of static shared memory) and
// read into fragments with ldmatrix; S = Q K^T and O += P V run on tensor cores (mma.sync m16n8k16, fp32
// accumulation) with an online softmax in base 2. Keys that are padding (key_padding_mask
// false), beyond T or after the query are -inf; a query row with no key left gives zeros.
// qkv: (B, T, 3C) with q | k | v, each (B, T, H, D); out: (B, T, C). Limits: D % 8 == 0, D <= DP (64 or 128),
// contiguous tensors, 16-byte aligned qkv. No torch header.
#pragma once
#include <cmath>

#include "smem_ops.cuh"

namespace gpt_fast::cuda {

constexpr int kFaBlockM = 64;   // query rows per block (16 per warp)
constexpr int kFaBlockN = 64;   // keys per tile
constexpr int kFaThreads = 128;

template <typename Elem>
struct AttentionArgs {
  const Elem* qkv;        // (B, T, 3C)
  const uint8_t* allow;   // (B, T) key_padding_mask, nonzero = attend; nullptr = all
  Elem* out;              // (B, T, C)
  int B, T, H, D;
  float scale_log2;       // log2(e) / sqrt(D)
};

template <typename T, int DP>
__global__ void __launch_bounds__(kFaThreads) flash_attention_mma_kernel(AttentionArgs<T> a) {
  static_assert(DP % 16 == 0 && DP <= 128, "padded head size");
  constexpr int kPad = 8;                     // row padding (16 bytes) against shared-memory bank conflicts
  constexpr int kStages = DP <= 64 ? 2 : 1;  // K/V buffers
  __shared__ __align__(16) T sK[kStages][kFaBlockN][DP + kPad];  // (stage, keys, D)
  __shared__ __align__(16) T sV[kStages][kFaBlockN][DP + kPad];  // (stage, keys, D)
  __shared__ uint8_t sAllow[kStages][kFaBlockN];

  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, t = lane % 4;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kFaBlockM;  // longest (last) query tiles start first
  const int b = blockIdx.y / a.H, h = blockIdx.y % a.H;
  const int64_t C = static_cast<int64_t>(a.H) * a.D, row_stride = 3 * C;
  const T* q_base = a.qkv + static_cast<int64_t>(b) * a.T * row_stride + h * a.D;  // (T, D) with row_stride
  const T* k_base = q_base + C;
  const T* v_base = q_base + 2 * C;
  const int row0 = m0 + warp * 16 + g;  // this lane's query rows: row0 and row0 + 8

  // Starts copying key tile n0 (64 keys x DP, zeros beyond T or D) into stage `st`.
  auto load_tile = [&](int n0, int st) {
    for (int idx = threadIdx.x; idx < kFaBlockN * DP / 8; idx += kFaThreads) {
      const int r = idx / (DP / 8), c = (idx % (DP / 8)) * 8, key = n0 + r;
      const bool in = key < a.T && c < a.D;
      const int64_t off = in ? key * row_stride + c : 0;
      cp_async_16(&sK[st][r][c], k_base + off, in);
      cp_async_16(&sV[st][r][c], v_base + off, in);
    }
    cp_async_commit();
    if (threadIdx.x < kFaBlockN) {
      const int key = n0 + threadIdx.x;
      sAllow[st][threadIdx.x] =
          key < a.T && (a.allow == nullptr || a.allow[static_cast<int64_t>(b) * a.T + key] != 0);
    }
  };

  // Q fragments (16 rows x DP) straight from global memory; padded rows and columns are zero.
  uint32_t qf[DP / 16][4];
#pragma unroll
  for (int ks = 0; ks < DP / 16; ++ks)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = row0 + (r & 1) * 8, col = ks * 16 + 2 * t + (r >= 2 ? 8 : 0);
      qf[ks][r] = (row < a.T && col < a.D) ? *reinterpret_cast<const uint32_t*>(q_base + row * row_stride + col) : 0u;
    }

  float o[DP / 8][4];  // (16 rows, DP) accumulator in C-fragment layout
#pragma unroll
  for (int dt = 0; dt < DP / 8; ++dt)
#pragma unroll
    for (int j = 0; j < 4; ++j) o[dt][j] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // running max (base 2) and this lane's partial sums

  const int key_end = min(a.T, m0 + kFaBlockM);
  load_tile(0, 0);
  for (int n0 = 0, it = 0; n0 < key_end; n0 += kFaBlockN, ++it) {
    const int st = it % kStages;
    cp_async_wait_all();
    GF_SYNC_DROP(1);  // tile `it` has landed for everyone, and everyone is done with the buffer loaded next
    if (kStages == 2 && n0 + kFaBlockN < key_end) load_tile(n0 + kFaBlockN, 1 - st);

    // S = Q K^T for 16 rows x 64 keys. B[k][n] = K[n][k]: ldmatrix (not transposed) of K's 8x8 blocks gives,
    // for key block nt, the b fragments of k-steps ks (r[0], r[1]) and ks + 1 (r[2], r[3]).
    float s[kFaBlockN / 8][4];
#pragma unroll
    for (int nt = 0; nt < kFaBlockN / 8; ++nt) {
#pragma unroll
      for (int j = 0; j < 4; ++j) s[nt][j] = 0.f;
#pragma unroll
      for (int ks = 0; ks < DP / 16; ks += 2) {
        if (ks * 16 >= a.D) break;
        uint32_t bk[4];
        ldmatrix_x4<false>(bk, &sK[st][nt * 8 + lane % 8][ks * 16 + (lane / 8) * 8]);
        mma_16816<T>(s[nt], qf[ks], bk);
        if (ks + 1 < DP / 16) mma_16816<T>(s[nt], qf[ks + 1], bk + 2);
      }
    }

    // Mask, then the online softmax for this lane's two rows (a row's 64 scores live in the 4 lanes of a quad).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = row0 + r * 8;
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kFaBlockN / 8; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int kl = nt * 8 + 2 * t + j, key = n0 + kl;
          float& v = s[nt][2 * r + j];
          v = (key <= q && sAllow[st][kl]) ? v * a.scale_log2 : -INFINITY;
          mx = fmaxf(mx, v);
        }
      mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
      const float m_new = fmaxf(m[r], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing allowed yet keeps p = 0
      const float alpha = exp2f(m[r] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kFaBlockN / 8; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float& v = s[nt][2 * r + j];
          v = exp2f(v - m_use);
          sum += v;
        }
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
#pragma unroll
      for (int dt = 0; dt < DP / 8; ++dt) {
        o[dt][2 * r] *= alpha;
        o[dt][2 * r + 1] *= alpha;
      }
    }

    // O += P V: the score C-fragments of key tiles 2kk, 2kk+1 are exactly the A-fragment of keys 16kk..16kk+15;
    // ldmatrix.trans of V's 8x8 blocks gives the b fragments of dims dt (r[0], r[1]) and dt + 1 (r[2], r[3]).
#pragma unroll
    for (int kk = 0; kk < kFaBlockN / 16; ++kk) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < DP / 8; dt += 2) {
        if (dt * 8 >= a.D) break;
        uint32_t bv[4];
        ldmatrix_x4<true>(bv, &sV[st][kk * 16 + ((lane / 8) & 1) * 8 + lane % 8][(dt + lane / 16) * 8]);
        mma_16816<T>(o[dt], pa, bv);
        mma_16816<T>(o[dt + 1], pa, bv + 2);
      }
    }
    if (kStages == 1) {
      GF_SYNC_DROP(2);  // everyone is done with sK / sV before the next tile overwrites them
      if (n0 + kFaBlockN < key_end) load_tile(n0 + kFaBlockN, 0);
    }
  }

  // Normalise and store: each lane writes pairs of columns of its two rows.
  T* out_base = a.out + static_cast<int64_t>(b) * a.T * C + h * a.D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = l[r];
    total += __shfl_xor_sync(kFullMask, total, 1);
    total += __shfl_xor_sync(kFullMask, total, 2);
    const float inv = total > 0.f ? 1.f / total : 0.f;
    const int q = row0 + r * 8;
    if (q >= a.T) continue;
#pragma unroll
    for (int dt = 0; dt < DP / 8; ++dt) {
      const int col = dt * 8 + 2 * t;
      if (col < a.D)
        *reinterpret_cast<uint32_t*>(out_base + q * C + col) = pack2<T>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    }
  }
}

}  // namespace gpt_fast::cuda
