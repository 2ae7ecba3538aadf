// Online-softmax state of one query row held by one warp, for the SIMT attention paths (fp32 flash attention
// and decode attention). Lane j scores key j of a 32-key tile; the output row is spread over the lanes
// (lane owns dims lane, lane + 32, ...). Scores are in base 2 (already multiplied by log2(e) / sqrt(D)).
#pragma once
#include <cmath>

#include "common.cuh"

namespace gpt_fast::cuda {

template <int DP>
struct WarpRowState {
  float m = -INFINITY;  // running max of the scores seen
  float l = 0.f;        // running sum of exp2(score - m)
  float o[DP / 32] = {};  // unnormalised output, dims lane + 32 * i

  // Folds in one tile: `score` is this lane's key score (-inf when not allowed); v_at(j, d) gives V[key j][d]
  // for the tile's keys j < n_valid (keys beyond have score -inf). `keep` (training dropout: 0 or 1, the
  // 1 / (1 - p) scale applied by the caller at the end) weights this lane's probability in the output but not in
  // the sum l, which normalises the undropped probabilities.
  template <typename VAt>
  __device__ void update(float score, int n_valid, int D, VAt v_at, float keep = 1.f) {
    const int lane = threadIdx.x % kWarp;
    const float m_new = fmaxf(m, warp_max(score));
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f(m - m_use);
    const float p = exp2f(score - m_use);
    l = l * alpha + warp_sum(p);
    m = m_new;
    const float pk = p * keep;  // p itself (exactly) without dropout
#pragma unroll
    for (int i = 0; i < DP / 32; ++i) o[i] *= alpha;
    for (int j = 0; j < n_valid; ++j) {
      const float pj = __shfl_sync(kFullMask, pk, j);
#pragma unroll
      for (int i = 0; i < DP / 32; ++i) {
        const int d = lane + 32 * i;
        if (d < D) o[i] = fmaf(pj, v_at(j, d), o[i]);  // explicit FMA: the same rounding on the GPU and in tests
      }
    }
  }
};

}  // namespace gpt_fast::cuda
