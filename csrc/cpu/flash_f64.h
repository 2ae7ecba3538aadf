// The float64 path of flash_attention_train and flash_attention_backward: plain scalar loops in double, one
// (batch, head) at a time, with the tiled kernels' masks, dropout and conventions (lse per row in base 2, -inf when
// the row attends nothing; such rows give zeros and no gradient). It exists so that torch.autograd.gradcheck can check the
// ops' own backward formula (FlashAttention-2's, as flash_backward_kernel.h computes it) in float64.
//
// Layout as the kernels: qkv / grad_qkv (B, T, 3C) contiguous, C = H D; out / grad_out (B, T, C) contiguous;
// lse (B, H, T); mask (B, T) or null.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "philox.h"

namespace gpt_fast::flash_f64 {

struct Shape {
  int64_t B, T, H, D;
  const bool* mask;
  uint64_t seed;
  uint32_t threshold;  // 0: no dropout
  double keep_scale;   // 1 / (1 - p)
};

// The scores of query i of (b, h) against keys 0..i, scaled; -inf where the key is hidden. Returns the row max.
inline double row_scores(const Shape& s, const double* qkv, int64_t b, int64_t h, int64_t i, double* scores) {
  const int64_t C = s.H * s.D, row = 3 * C;
  const double* q = qkv + (b * s.T + i) * row + h * s.D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j <= i; ++j) {
    if (s.mask && !s.mask[b * s.T + j]) {
      scores[j] = -std::numeric_limits<double>::infinity();
      continue;
    }
    const double* k = qkv + (b * s.T + j) * row + C + h * s.D;
    double dot = 0;
    for (int64_t d = 0; d < s.D; ++d) dot += q[d] * k[d];
    scores[j] = dot * scale;
    mx = std::max(mx, scores[j]);
  }
  return mx;
}

// The dropout factor of probability (b, h, i, j): keep_scale or 0 (1 without dropout).
inline double drop_factor(const Shape& s, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (s.threshold == 0) return 1.0;
  const uint64_t n = static_cast<uint64_t>(((b * s.H + h) * s.T + i) * s.T + j);
  return philox::keep(s.seed, n, s.threshold) ? s.keep_scale : 0.0;
}

// out (B, T, C) and lse (B, H, T) for the (batch, head) pairs [begin, end).
inline void forward(const Shape& s, const double* qkv, double* out, float* lse, int64_t begin, int64_t end) {
  const int64_t C = s.H * s.D;
  std::vector<double> scores(s.T);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / s.H, h = bh % s.H;
    for (int64_t i = 0; i < s.T; ++i) {
      const double mx = row_scores(s, qkv, b, h, i, scores.data());
      double* o = out + (b * s.T + i) * C + h * s.D;
      std::fill(o, o + s.D, 0.0);
      if (mx == -std::numeric_limits<double>::infinity()) {
        lse[bh * s.T + i] = -std::numeric_limits<float>::infinity();
        continue;
      }
      double sum = 0;
      for (int64_t j = 0; j <= i; ++j) sum += std::exp(scores[j] - mx);
      const double row_lse = mx + std::log(sum);
      lse[bh * s.T + i] = static_cast<float>(row_lse * 1.4426950408889634);  // base 2, as the kernels
      for (int64_t j = 0; j <= i; ++j) {
        const double pd = std::exp(scores[j] - row_lse) * drop_factor(s, b, h, i, j);
        const double* v = qkv + (b * s.T + j) * 3 * C + 2 * C + h * s.D;
        for (int64_t d = 0; d < s.D; ++d) o[d] += pd * v[d];
      }
    }
  }
}

// grad_qkv (B, T, 3C) for the (batch, head) pairs [begin, end); P is recomputed from the float64 scores (the saved
// fp32 lse only marks the rows with nothing to attend), so that gradcheck sees the exact derivative.
inline void backward(const Shape& s, const double* grad_out, const double* qkv, const double* out, double* grad_qkv,
                     int64_t begin, int64_t end) {
  const int64_t C = s.H * s.D, row = 3 * C;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  std::vector<double> scores(s.T);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / s.H, h = bh % s.H;
    for (int64_t t = 0; t < s.T; ++t)
      for (int part = 0; part < 3; ++part)
        std::fill_n(grad_qkv + (b * s.T + t) * row + part * C + h * s.D, s.D, 0.0);
    for (int64_t i = 0; i < s.T; ++i) {
      const double mx = row_scores(s, qkv, b, h, i, scores.data());
      if (mx == -std::numeric_limits<double>::infinity()) continue;  // nothing attended: no gradient
      double sum = 0;
      for (int64_t j = 0; j <= i; ++j) sum += std::exp(scores[j] - mx);
      const double row_lse = mx + std::log(sum);
      const double* dout = grad_out + (b * s.T + i) * C + h * s.D;
      const double* o = out + (b * s.T + i) * C + h * s.D;
      double delta = 0;  // rowsum(dO * O)
      for (int64_t d = 0; d < s.D; ++d) delta += dout[d] * o[d];
      const double* q = qkv + (b * s.T + i) * row + h * s.D;
      double* dq = grad_qkv + (b * s.T + i) * row + h * s.D;
      for (int64_t j = 0; j <= i; ++j) {
        const double p = std::exp(scores[j] - row_lse), z = drop_factor(s, b, h, i, j);
        const double* k = qkv + (b * s.T + j) * row + C + h * s.D;
        const double* v = k + C;
        double* dk = grad_qkv + (b * s.T + j) * row + C + h * s.D;
        double* dv = dk + C;
        double dp = 0;  // dO . v_j
        for (int64_t d = 0; d < s.D; ++d) dp += dout[d] * v[d];
        const double ds = p * (dp * z - delta) * scale;
        for (int64_t d = 0; d < s.D; ++d) {
          dv[d] += p * z * dout[d];
          dq[d] += ds * k[d];
          dk[d] += ds * q[d];
        }
      }
    }
  }
}

}  // namespace gpt_fast::flash_f64
