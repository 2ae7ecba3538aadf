// CPU kernel for gpt_fast::add_layernorm_backward: the gradients of out = layer_norm(v) * weight + ln_bias,
// v = x + dropout(residual [+ bias]), given grad_out. Returns (grad_v, grad_weight, grad_ln_bias, grad_residual);
// grad_v is the gradient of x. Without dropout (p = 0) it is residual's too and grad_residual is empty (0,); with
// dropout grad_residual = grad_v * keep / (1 - p), its mask redrawn from the forward's seed (csrc/cpu/dropout_mask.h),
// written in the pass that writes grad_v. bias's gradient is grad_residual's (or grad_v's) column sum (autograd).
//   xhat = (v - mean) * rstd,  g = grad_out * weight
//   grad_v = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  grad_weight = sum_rows(grad_out * xhat),
//   grad_ln_bias = sum_rows(grad_out)
// The statistics are recomputed, exactly as the forward takes them (fp32 mean with the second-pass shift
// correction, csrc/cpu/add_layernorm.cpp): the backward must read x and residual anyway to rebuild xhat, and the
// statistics then cost two passes over a row already in L1, against an extra (rows, 2) output of the forward that
// inference would pay for too. Each row: v into an fp32 row buffer, the statistics, one pass for the two row sums
// (and the column sums), one to write grad_v. Column sums go to per-task fp32 partial rows (P, 2, C), summed in a
// fixed order at the end. grad_out, x, residual: (..., C); bias (optional), weight: (C,); fp32, bf16, fp16 (float64
// on the scalar path, in double, for gradcheck). AVX-512 or AVX2 + FMA when the CPU has it, else scalar loops.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/dropout_mask.h"
#include "cpu/vec.h"
#include "cpu/vec_avx2.h"

namespace gpt_fast {
namespace {

constexpr int kParts = 8;  // partial sums of the scalar path, as the forward's

template <typename T>
struct BackwardArgs {
  const T* go;    // (rows, C) grad_out
  const T* x;     // (rows, C)
  const T* res;   // (rows, C)
  const T* bias;  // (C,) or nullptr
  const T* w;     // (C,)
  T* dv;          // (rows, C) grad_v
  T* dr;          // (rows, C) grad_residual, with dropout; else nullptr
  const cpu::Dropout* drop;  // nullptr without dropout
  int64_t C;
  double eps;
};

template <typename T, typename A>
void backward_scalar(const BackwardArgs<T>& a, int64_t begin, int64_t end, A* dw, A* db) {
  const int64_t C = a.C;
  std::vector<A> v(C), gbuf(C);  // (C,) each: the row v, and g as rounded once (see the last pass)
  std::vector<uint64_t> bits(a.drop ? cpu::keep_words(C) : 0);  // the row's keep bits
  const A scale = a.drop ? static_cast<A>(a.drop->scale) : A(1);
  for (int64_t r = begin; r < end; ++r) {
    const T *xr = a.x + r * C, *rr = a.res + r * C, *gr = a.go + r * C;
    const int64_t off = (r * C) & 3;  // bit of column 0
    if (a.drop) cpu::keep_bits_scalar(*a.drop, static_cast<uint64_t>(r * C), C, bits.data());
    A part[kParts] = {};
    for (int64_t c = 0; c < C; ++c) {
      if (a.drop) {
        const A d = static_cast<A>(rr[c]) + (a.bias ? static_cast<A>(a.bias[c]) : A(0));
        v[c] = static_cast<A>(xr[c]) + (cpu::keep_bit(bits.data(), off + c) ? d * scale : A(0));
      } else {
        v[c] = static_cast<A>(xr[c]) + static_cast<A>(rr[c]) + (a.bias ? static_cast<A>(a.bias[c]) : A(0));
      }
      part[c % kParts] += v[c];
    }
    A total = 0, dsum = 0, sq = 0, dpart[kParts] = {}, sqpart[kParts] = {};
    for (A p : part) total += p;
    const A mean0 = total / static_cast<A>(C);
    for (int64_t c = 0; c < C; ++c) {
      dpart[c % kParts] += v[c] - mean0;
      sqpart[c % kParts] += (v[c] - mean0) * (v[c] - mean0);
    }
    for (int i = 0; i < kParts; ++i) dsum += dpart[i], sq += sqpart[i];
    const A shift = dsum / static_cast<A>(C), mean = mean0 + shift;
    const A rstd = 1 / std::sqrt(std::max(A(0), sq / static_cast<A>(C) - shift * shift) + static_cast<A>(a.eps));
    A sg = 0, sgx = 0, gpart[kParts] = {}, gxpart[kParts] = {};  // row sums in kParts partial sums (accuracy)
    for (int64_t c = 0; c < C; ++c) {
      const A xh = (v[c] - mean) * rstd, go = static_cast<A>(gr[c]), g = go * static_cast<A>(a.w[c]);
      gbuf[c] = g;
      gpart[c % kParts] += g, gxpart[c % kParts] += g * xh;
      dw[c] += go * xh, db[c] += go;
    }
    for (int i = 0; i < kParts; ++i) sg += gpart[i], sgx += gxpart[i];
    const A mg = sg / static_cast<A>(C), mgx = sgx / static_cast<A>(C);
    for (int64_t c = 0; c < C; ++c) {  // g from the buffer: a recomputed go * w could be fused into g - mg
      const A xh = (v[c] - mean) * rstd, d = rstd * ((gbuf[c] - mg) - xh * mgx);
      a.dv[r * C + c] = static_cast<T>(d);
      if (a.dr) a.dr[r * C + c] = static_cast<T>(cpu::keep_bit(bits.data(), off + c) ? d * scale : A(0));
    }
  }
}

#if GPT_FAST_HAVE_X86
// 16 elements of p at [c, c + 16) as fp32, those past C as 0. Masked only at the tail: full-width masked loads
// and stores made the fp32 path twice as slow as the AVX2 one on AMD Zen 5.
template <typename T>
GPT_FAST_AVX512 inline __m512 load16(const T* p, int64_t c, int64_t C) {
  return c + 16 <= C ? cpu::Vec16<T>::load(p + c) : cpu::Vec16<T>::load(p + c, cpu::first_lanes(C - c));
}

// dw, db: (padded,) fp32, padded = C rounded up to 16; lanes past C stay 0.
template <typename T>
GPT_FAST_AVX512 void backward_avx512(const BackwardArgs<T>& a, int64_t begin, int64_t end, float* dw, float* db) {
  using V = cpu::Vec16<T>;
  const int64_t C = a.C, padded = (C + 15) / 16 * 16;
  std::vector<float> buf(3 * padded, 0.f);  // row v | fp32 weight | g = grad_out * weight, each (padded,)
  float *v = buf.data(), *wf = v + padded, *gb = wf + padded;
  for (int64_t c = 0; c < C; c += 16) _mm512_storeu_ps(wf + c, V::load(a.w + c, cpu::first_lanes(C - c)));
  const float inv_c = 1.f / static_cast<float>(C);
  std::vector<uint64_t> bits(a.drop ? cpu::keep_words(C) : 0);  // the row's keep bits
  const __m512 scale = _mm512_set1_ps(a.drop ? static_cast<float>(a.drop->scale) : 1.f);
  for (int64_t r = begin; r < end; ++r) {
    const T *xr = a.x + r * C, *rr = a.res + r * C, *gr = a.go + r * C;
    const int64_t off = (r * C) & 3;  // bit of column 0
    if (a.drop) cpu::keep_bits_avx512(*a.drop, static_cast<uint64_t>(r * C), C, bits.data());
    __m512 total = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {  // lanes past C load as 0 and stay 0 in v
      __m512 s;
      if (a.drop) {
        __m512 d = load16(rr, c, C);
        if (a.bias) d = _mm512_add_ps(d, load16(a.bias, c, C));
        const auto keep = static_cast<__mmask16>(cpu::keep_bits(bits.data(), off + c, 16));
        s = _mm512_add_ps(load16(xr, c, C), _mm512_maskz_mul_ps(keep, d, scale));
      } else {
        s = _mm512_add_ps(load16(xr, c, C), load16(rr, c, C));
        if (a.bias) s = _mm512_add_ps(s, load16(a.bias, c, C));
      }
      _mm512_storeu_ps(v + c, s);
      total = _mm512_add_ps(total, s);
    }
    const float mean0 = _mm512_reduce_add_ps(total) * inv_c;
    __m512 dsum = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {
      const __m512 d = _mm512_maskz_sub_ps(cpu::first_lanes(C - c), _mm512_loadu_ps(v + c), _mm512_set1_ps(mean0));
      dsum = _mm512_add_ps(dsum, d);
      sq = _mm512_fmadd_ps(d, d, sq);
    }
    const float shift = _mm512_reduce_add_ps(dsum) * inv_c;
    const float var = std::max(0.f, _mm512_reduce_add_ps(sq) * inv_c - shift * shift);
    const __m512 mean = _mm512_set1_ps(mean0 + shift);
    const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(var + static_cast<float>(a.eps)));
    __m512 sg = _mm512_setzero_ps(), sgx = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {  // grad_out past C loads as 0: nothing added there
      const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(v + c), mean), rstd);
      const __m512 go = load16(gr, c, C);
      const __m512 g = _mm512_mul_ps(go, _mm512_loadu_ps(wf + c));
      _mm512_storeu_ps(gb + c, g);
      sg = _mm512_add_ps(sg, g);
      sgx = _mm512_fmadd_ps(g, xh, sgx);
      _mm512_storeu_ps(dw + c, _mm512_fmadd_ps(go, xh, _mm512_loadu_ps(dw + c)));
      _mm512_storeu_ps(db + c, _mm512_add_ps(go, _mm512_loadu_ps(db + c)));
    }
    const __m512 mg = _mm512_set1_ps(_mm512_reduce_add_ps(sg) * inv_c);
    const __m512 mgx = _mm512_set1_ps(_mm512_reduce_add_ps(sgx) * inv_c);
    T* o = a.dv + r * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(v + c), mean), rstd);
      const __m512 g = _mm512_loadu_ps(gb + c);  // as summed (a recomputed product could be fused into g - mg)
      const __m512 d = _mm512_mul_ps(rstd, _mm512_fnmadd_ps(xh, mgx, _mm512_sub_ps(g, mg)));
      const __mmask16 m = c + 16 <= C ? __mmask16(0xFFFF) : cpu::first_lanes(C - c);
      if (m == 0xFFFF) V::store(o + c, d);
      else V::store(o + c, d, m);
      if (a.dr) {
        const auto keep = static_cast<__mmask16>(cpu::keep_bits(bits.data(), off + c, 16));
        const __m512 dr = _mm512_maskz_mul_ps(keep, d, scale);
        if (m == 0xFFFF) V::store(a.dr + r * C + c, dr);
        else V::store(a.dr + r * C + c, dr, m);
      }
    }
  }
}

// 8 elements of p at [c, c + 8) as fp32, those past C as 0.
template <typename T>
GPT_FAST_AVX2 inline __m256 load8(const T* p, int64_t c, int64_t C) {
  return c + 8 <= C ? cpu::Vec8<T>::load(p + c) : cpu::load_part(p + c, C - c);
}

// dw, db: (padded,) fp32, padded = C rounded up to 8; lanes past C stay 0.
template <typename T>
GPT_FAST_AVX2 void backward_avx2(const BackwardArgs<T>& a, int64_t begin, int64_t end, float* dw, float* db) {
  const int64_t C = a.C, padded = (C + 7) / 8 * 8, full = C - C % 8;
  std::vector<float> buf(3 * padded, 0.f);  // row v | fp32 weight | g = grad_out * weight, each (padded,)
  float *v = buf.data(), *wf = v + padded, *gb = wf + padded;
  for (int64_t c = 0; c < C; c += 8) _mm256_storeu_ps(wf + c, load8(a.w, c, C));
  const __m256 tail_mask = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
      _mm256_set1_epi32(static_cast<int>(C % 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  const float inv_c = 1.f / static_cast<float>(C);
  std::vector<uint64_t> bits(a.drop ? cpu::keep_words(C) : 0);  // the row's keep bits
  const __m256 scale = _mm256_set1_ps(a.drop ? static_cast<float>(a.drop->scale) : 1.f);
  for (int64_t r = begin; r < end; ++r) {
    const T *xr = a.x + r * C, *rr = a.res + r * C, *gr = a.go + r * C;
    const int64_t off = (r * C) & 3;  // bit of column 0
    if (a.drop) cpu::keep_bits_avx2(*a.drop, static_cast<uint64_t>(r * C), C, bits.data());
    __m256 total = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) {  // lanes past C load as 0 and stay 0 in v
      __m256 s;
      if (a.drop) {
        __m256 d = load8(rr, c, C);
        if (a.bias) d = _mm256_add_ps(d, load8(a.bias, c, C));
        s = _mm256_add_ps(load8(xr, c, C), cpu::apply_keep8(d, cpu::keep_bits(bits.data(), off + c, 8), scale));
      } else {
        s = _mm256_add_ps(load8(xr, c, C), load8(rr, c, C));
        if (a.bias) s = _mm256_add_ps(s, load8(a.bias, c, C));
      }
      _mm256_storeu_ps(v + c, s);
      total = _mm256_add_ps(total, s);
    }
    const float mean0 = cpu::reduce_add_avx2(total) * inv_c;
    __m256 dsum = _mm256_setzero_ps(), sq = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(v + c), _mm256_set1_ps(mean0));
      if (c == full) d = _mm256_and_ps(d, tail_mask);
      dsum = _mm256_add_ps(dsum, d);
      sq = _mm256_fmadd_ps(d, d, sq);
    }
    const float shift = cpu::reduce_add_avx2(dsum) * inv_c;
    const float var = std::max(0.f, cpu::reduce_add_avx2(sq) * inv_c - shift * shift);
    const __m256 mean = _mm256_set1_ps(mean0 + shift);
    const __m256 rstd = _mm256_set1_ps(1.f / std::sqrt(var + static_cast<float>(a.eps)));
    __m256 sg = _mm256_setzero_ps(), sgx = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) {  // grad_out past C loads as 0: nothing added there
      const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + c), mean), rstd);
      const __m256 go = load8(gr, c, C);
      const __m256 g = _mm256_mul_ps(go, _mm256_loadu_ps(wf + c));
      _mm256_storeu_ps(gb + c, g);
      sg = _mm256_add_ps(sg, g);
      sgx = _mm256_fmadd_ps(g, xh, sgx);
      _mm256_storeu_ps(dw + c, _mm256_fmadd_ps(go, xh, _mm256_loadu_ps(dw + c)));
      _mm256_storeu_ps(db + c, _mm256_add_ps(go, _mm256_loadu_ps(db + c)));
    }
    const __m256 mg = _mm256_set1_ps(cpu::reduce_add_avx2(sg) * inv_c);
    const __m256 mgx = _mm256_set1_ps(cpu::reduce_add_avx2(sgx) * inv_c);
    T* o = a.dv + r * C;
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + c), mean), rstd);
      const __m256 g = _mm256_loadu_ps(gb + c);  // as summed (a recomputed product could be fused into g - mg)
      const __m256 d = _mm256_mul_ps(rstd, _mm256_fnmadd_ps(xh, mgx, _mm256_sub_ps(g, mg)));
      const __m256 dr = a.dr ? cpu::apply_keep8(d, cpu::keep_bits(bits.data(), off + c, 8), scale) : d;
      if (c < full) {
        cpu::Vec8<T>::store(o + c, d);
        if (a.dr) cpu::Vec8<T>::store(a.dr + r * C + c, dr);
      } else {
        cpu::store_part(o + c, d, C - c);
        if (a.dr) cpu::store_part(a.dr + r * C + c, dr, C - c);
      }
    }
  }
}
#endif

// Rows [begin, end) into the partial column sums dw, db (C,) of one task, on the tier the CPU allows.
template <typename T, typename A>
void backward_rows(const BackwardArgs<T>& a, int64_t begin, int64_t end, A* dw, A* db, cpu::Isa isa) {
#if GPT_FAST_HAVE_X86
  if constexpr (std::is_same_v<A, float>) {
    const int64_t lanes = isa >= cpu::Isa::kAvx512 ? 16 : 8, padded = (a.C + lanes - 1) / lanes * lanes;
    if (isa >= cpu::Isa::kAvx2) {
      std::vector<float> acc(2 * padded, 0.f);  // dw | db, padded
      if (isa >= cpu::Isa::kAvx512) backward_avx512(a, begin, end, acc.data(), acc.data() + padded);
      else backward_avx2(a, begin, end, acc.data(), acc.data() + padded);
      std::copy(acc.begin(), acc.begin() + a.C, dw);
      std::copy(acc.begin() + padded, acc.begin() + padded + a.C, db);
      return;
    }
  }
#endif
  (void)isa;
  backward_scalar<T, A>(a, begin, end, dw, db);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& residual,
    const std::optional<at::Tensor>& bias, const at::Tensor& weight, double eps, double dropout_p, int64_t seed) {
  constexpr const char* op = "gpt_fast::add_layernorm_backward";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  check_float_or_double_dtype(x, op, "x");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, op, ": x must have a non-empty last dimension");
  check_like(residual, x, op, "residual");
  check_like(grad_out, x, op, "grad_out");
  check_vector(weight, C, x, op, "weight");
  if (bias) check_vector(*bias, C, x, op, "bias");
  TORCH_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be a finite non-negative number, got ", eps);
  check_dropout_p(dropout_p, op);
  const cpu::Dropout dropout{static_cast<uint64_t>(seed), philox::dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p)};

  auto gc = grad_out.contiguous(), xc = x.contiguous(), rc = residual.contiguous(), wc = weight.contiguous();
  at::Tensor biasc = bias ? bias->contiguous() : at::Tensor();
  auto dv = xc.new_empty(xc.sizes());  // (..., C)
  // (..., C) with dropout, else (0,): grad_v is residual's gradient then
  auto dr = dropout_p > 0 ? xc.new_empty(xc.sizes()) : xc.new_empty({0});
  const int64_t rows = xc.numel() / C;
  // P tasks, each with its partial (dw | db) row; summed in task order below (deterministic for a thread count)
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  checked_mul(checked_mul(P, 2, op, "2 * tasks"), C, op, "tasks * 2 * C");
  checked_mul(P, rows, op, "tasks * rows");  // p * rows below
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partial = xc.new_zeros({P, 2, C}, acc_dtype);  // (P, 2, C)
  const cpu::Isa isa = cpu::cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_layernorm_backward_cpu", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const BackwardArgs<scalar_t> a{gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                   rc.const_data_ptr<scalar_t>(), bias ? biasc.const_data_ptr<scalar_t>() : nullptr,
                                   wc.const_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(),
                                   dropout_p > 0 ? dr.mutable_data_ptr<scalar_t>() : nullptr,
                                   dropout_p > 0 ? &dropout : nullptr, C, eps};
    A* part = partial.mutable_data_ptr<A>();
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        backward_rows<scalar_t, A>(a, p * rows / P, (p + 1) * rows / P, part + p * 2 * C, part + p * 2 * C + C, isa);
      }
    });
  });
  auto dw = partial.select(1, 0).sum(0).to(x.scalar_type());  // (C,)
  auto db = partial.select(1, 1).sum(0).to(x.scalar_type());  // (C,)
  return {dv, dw, db, dr};
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("add_layernorm_backward", &add_layernorm_backward_cpu); }

}  // namespace gpt_fast
