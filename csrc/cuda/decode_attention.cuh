// CUDA kernel bodies for gpt_fast::decode_attention: S new tokens per row attend over the KV cache, and their keys
// and values are written into it by the same kernel (flash-decoding).
// decode_attention_kernel: one block of 4 warps per (split, batch x head); a split covers `chunk` cache positions.
// The block writes the new tokens that fall in its positions to k_cache/v_cache, and reads every key at a position
// >= len straight from qkv (so no block ever reads a cache slot another block writes). For each new token i (at
// position len + i, attending to [0, len + i]) the 4 warps take 32-key tiles in turn (WarpRowState), then merge
// their states through shared memory; with one split the block writes the output, else a partial (m, l, O).
// decode_merge_kernel: one warp per (b, s, h) combines the splits' partials.
// qkv: (B, S, 3C); caches: (B, H, Tmax, D); cache_lengths: (B,) int64 (a row with len < 0 or len > Tmax - S gets
// NaN outputs and no cache write: the binding does not look at the lengths, so that no step waits for the host);
// out: (B, S, C). Non-finite values as PyTorch's math: a NaN score or a +inf one makes the softmax sum NaN (exp2),
// a token whose scores are all -inf gets 0 / 0 = NaN;
// partials: o (splits, B, S, H, DP) and ml (splits, B, S, H, 2) floats. Limits: D % 8 == 0, D <= DP. No torch header.
#pragma once
#include "warp_softmax.cuh"

namespace gpt_fast::cuda {

constexpr int kDecThreads = 128;
constexpr int kDecWarps = kDecThreads / kWarp;

template <typename T>
struct DecodeArgs {
  const T* qkv;
  T* k_cache;
  T* v_cache;
  const int64_t* lengths;
  T* out;
  float* part_o;   // nullptr when splits == 1
  float* part_ml;
  int B, S, H, D, Tmax, chunk;
  float scale_log2;
};

template <typename T, int DP>
__global__ void __launch_bounds__(kDecThreads, 4) decode_attention_kernel(DecodeArgs<T> a) {
  __shared__ float sQ[DP];
  __shared__ float sO[kDecWarps][DP];
  __shared__ float sML[kDecWarps][2];

  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int split = blockIdx.x, splits = gridDim.x;
  const int b = blockIdx.y / a.H, h = blockIdx.y % a.H;
  const int64_t C = static_cast<int64_t>(a.H) * a.D, row_stride = 3 * C;
  const int64_t len64 = a.lengths[b];
  if (len64 < 0 || len64 > a.Tmax - a.S) {  // out of range (len + S could wrap): no cache write, NaN output rows
    if (split == 0)
      for (int idx = threadIdx.x; idx < a.S * a.D; idx += kDecThreads)
        a.out[((static_cast<int64_t>(b) * a.S + idx / a.D) * a.H + h) * a.D + idx % a.D] = from_float<T>(NAN);
    return;  // the whole block leaves before any barrier
  }
  const int len = static_cast<int>(len64);
  const int k0 = split * a.chunk, k1 = min(k0 + a.chunk, len + a.S);
  const T* new_q = a.qkv + static_cast<int64_t>(b) * a.S * row_stride + h * a.D;  // (S, D), row_stride
  const T* new_k = new_q + C;
  const T* new_v = new_q + 2 * C;
  const int64_t cache_head = (static_cast<int64_t>(b) * a.H + h) * a.Tmax * a.D;
  T* kc = a.k_cache + cache_head;  // (Tmax, D)
  T* vc = a.v_cache + cache_head;

  // Write the new tokens whose positions fall in this split.
  constexpr int N = Vec<T>::N;
  const int w0 = max(k0, len), n_write = max(0, k1 - w0);
  for (int idx = threadIdx.x; idx < n_write * (a.D / N); idx += kDecThreads) {
    const int p = w0 + idx / (a.D / N), c = (idx % (a.D / N)) * N;
    store_vec(kc + static_cast<int64_t>(p) * a.D + c, load_vec(new_k + (p - len) * row_stride + c));
    store_vec(vc + static_cast<int64_t>(p) * a.D + c, load_vec(new_v + (p - len) * row_stride + c));
  }
  auto key_row = [&](int p) { return p < len ? kc + static_cast<int64_t>(p) * a.D : new_k + (p - len) * row_stride; };
  auto val_row = [&](int p) { return p < len ? vc + static_cast<int64_t>(p) * a.D : new_v + (p - len) * row_stride; };

  for (int i = 0; i < a.S; ++i) {
    const int end = min(k1, len + i + 1);  // keys [k0, end) for token i
    for (int d = threadIdx.x; d < DP; d += kDecThreads) sQ[d] = d < a.D ? to_float(new_q[i * row_stride + d]) : 0.f;
    GF_SYNC_DROP(1);

    WarpRowState<DP> st;
    for (int t0 = k0 + warp * kWarp; t0 < end; t0 += kDecWarps * kWarp) {
      const int p = t0 + lane;
      float score = -INFINITY;
      if (p < end) {
        const T* kr = key_row(p);
        float acc[8] = {};
#pragma unroll 1
        for (int c = 0; c < a.D; c += 8)  // D % 8 == 0; 8 / N vector loads per step
#pragma unroll
          for (int u = 0; u < 8 / N; ++u) {
            const Vec<T> kv = load_vec(kr + c + u * N);
#pragma unroll
            for (int j = 0; j < N; ++j) acc[u * N + j] = fmaf(sQ[c + u * N + j], to_float(kv.e[j]), acc[u * N + j]);
          }
        score = tree_sum8(acc) * a.scale_log2;
      }
      st.update(score, min(kWarp, end - t0), a.D, [&](int j, int d) { return to_float(val_row(t0 + j)[d]); });
    }
    if (lane == 0) {
      sML[warp][0] = st.m;
      sML[warp][1] = st.l;
    }
#pragma unroll
    for (int j = 0; j < DP / 32; ++j) sO[warp][lane + 32 * j] = st.o[j];
    GF_SYNC_DROP(2);

    // Merge the 4 warps' states; threads take dims.
    float m = -INFINITY;
    for (int w = 0; w < kDecWarps; ++w) m = fmaxf(m, sML[w][0]);
    const float m_use = m == -INFINITY ? 0.f : m;
    float l = 0.f;
    for (int w = 0; w < kDecWarps; ++w) l += sML[w][1] * exp2f(sML[w][0] - m_use);
    const int64_t item = (static_cast<int64_t>(b) * a.S + i) * a.H + h;  // (b, i, h)
    for (int d = threadIdx.x; d < a.D; d += kDecThreads) {
      float o = 0.f;
      for (int w = 0; w < kDecWarps; ++w) o += sO[w][d] * exp2f(sML[w][0] - m_use);
      if (splits == 1) {
        a.out[item * a.D + d] = from_float<T>(o / l);  // l = 0 only when every score is -inf: NaN, as PyTorch
      } else {
        a.part_o[(split * (static_cast<int64_t>(a.B) * a.S * a.H) + item) * DP + d] = o;
      }
    }
    if (splits > 1 && threadIdx.x == 0) {
      float* ml = a.part_ml + (split * (static_cast<int64_t>(a.B) * a.S * a.H) + item) * 2;
      ml[0] = m;
      ml[1] = l;
    }
    GF_SYNC_DROP(3);  // sQ, sO and sML are rewritten by the next token
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kDecThreads) decode_merge_kernel(DecodeArgs<T> a, int splits) {
  const int64_t items = static_cast<int64_t>(a.B) * a.S * a.H;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kDecWarps + threadIdx.x / kWarp;  // (b, s, h)
  const int lane = threadIdx.x % kWarp;
  if (item >= items) return;  // no barrier in this kernel
  const int64_t len = a.lengths[item / (static_cast<int64_t>(a.S) * a.H)];
  if (len < 0 || len > a.Tmax - a.S) return;  // out-of-range row (len + S could wrap): the attention kernel wrote NaN
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, a.part_ml[(s * items + item) * 2]);
  const float m_use = m == -INFINITY ? 0.f : m;
  float l = 0.f, o[DP / 32] = {};
  for (int s = 0; s < splits; ++s) {
    const float w = exp2f(a.part_ml[(s * items + item) * 2] - m_use);
    l += a.part_ml[(s * items + item) * 2 + 1] * w;
#pragma unroll
    for (int j = 0; j < DP / 32; ++j)
      if (lane + 32 * j < a.D) o[j] += a.part_o[(s * items + item) * DP + lane + 32 * j] * w;
  }
  const float inv = 1.f / l;  // l = 0 only when every score of the token is -inf: NaN output, as PyTorch's softmax
#pragma unroll
  for (int j = 0; j < DP / 32; ++j) {
    const int d = lane + 32 * j;
    if (d < a.D) a.out[item * a.D + d] = from_float<T>(o[j] * inv);
  }
}

}  // namespace gpt_fast::cuda
