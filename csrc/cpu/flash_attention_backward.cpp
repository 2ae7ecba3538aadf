// CPU kernel for gpt_fast::flash_attention_backward: the gradient of flash_attention_train with respect to the packed
// qkv, FlashAttention-2 style (the probabilities are recomputed from the saved log-sum-exp, never stored):
//
//   first, per (batch, head, query block of 64): Delta = rowsum(dO * O) of its rows (once per row: made in every
//   key block's task instead, it cost a quarter or more of forward + backward; 2026-12-08, Zen 4, B=4, H=12, bf16,
//   T = 256 / 512: 19.0-23.0 -> 14.6-16.8 ms and 69-70 -> 47-52 ms),
//   then per (batch, head, key block of 64) task, over the query blocks at or after the key block (causal):
//     S = Q K^T log2(e) / sqrt(D) (the forward's base-2 scores, the same fp32 products in the same order),
//     P = exp2(S - lse)  (lse in base 2; 0 where masked: causal, key padding, or a row with nothing to attend)
//     Z = the forward's dropout factors (csrc/philox.h, same seed and element index: 1 / (1 - p) or 0)
//     dV += (P Z)^T dO,  dP = (dO V^T) Z,  dS = P (dP - Delta) with Delta = rowsum(dO * O)
//     dK += dS^T Q / sqrt(D),  dQ's share dS K / sqrt(D) -> the task's own fp32 partial rows
//   then one pass sums each query row's partials over the key blocks in a fixed order (no atomics, deterministic)
//   and writes dQ. dK and dV rows belong to one task each.
//
// fp32 math for fp32 / bf16 / fp16 inputs (grad_qkv in the input's dtype, (B, T, 3C) contiguous); the GEMM
// micro-kernel and exp2 of flash_backward_kernel.h compiled for AVX-512 and portable code here, for AVX2 + FMA
// in flash_attention_backward_avx2.cpp. float64 runs a scalar path in double (flash_f64.h), for gradcheck.
// Memory: Delta, B H T floats, and the partial dQ rows, B H (n_kb T - 64 n_kb (n_kb - 1) / 2) Dp floats (n_kb =
// ceil(T / 64), Dp = D rounded up to 64): about B H T^2 D / 128 floats (24 MiB at B = 4, H = 12, T = 512, D = 64).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "cpu/flash_backward_kernel.h"
#include "cpu/flash_f64.h"
#include "flash_train_checks.h"
#include "philox.h"

namespace gpt_fast {
namespace {
using namespace attention;
using flash_bwd::kBlock;

template <typename T>
struct BackwardTasks {
  static GPT_FAST_INLINE void run(const flash_bwd::Params& p, int64_t begin, int64_t end) {
    flash_bwd::run_backward_tasks<T>(p, begin, end);
  }
#if GPT_FAST_HAVE_X86
  static void run_avx2(const flash_bwd::Params& p, int64_t begin, int64_t end) {
    flash_bwd::run_backward_tasks_avx2<T>(p, begin, end);
  }
#endif
};

template <typename T>
struct DeltaTasks {  // Delta = rowsum(dO * O) of every query row, before BackwardTasks
  static GPT_FAST_INLINE void run(const flash_bwd::Params& p, int64_t begin, int64_t end) {
    flash_bwd::run_delta_tasks<T>(p, begin, end);
  }
#if GPT_FAST_HAVE_X86
  static void run_avx2(const flash_bwd::Params& p, int64_t begin, int64_t end) {
    flash_bwd::run_delta_tasks_avx2<T>(p, begin, end);
  }
#endif
};

// dQ rows of the query blocks [begin, end) (task = (batch, head) * n_qb + block): the partials summed over key
// blocks 0 .. i / 64 in that order, times 1 / sqrt(D), into grad_qkv's q part.
template <typename T>
void reduce_dq(const flash_bwd::Params& p, int64_t begin, int64_t end) {
  const int64_t n_qb = (p.T + kBlock - 1) / kBlock, C = p.H * p.D;
  float acc[flash_bwd::kMaxHead];
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / n_qb, qb = task % n_qb, b = bh / p.H, h = bh % p.H;
    for (int64_t i = qb * kBlock; i < std::min(p.T, (qb + 1) * kBlock); ++i) {
      std::fill_n(acc, p.D, 0.f);
      for (int64_t kb = 0; kb <= qb; ++kb) {
        const float* part = p.dq_part + flash_bwd::dq_offset(p, bh, kb) + (i - kb * kBlock) * p.Dp;
        for (int64_t d = 0; d < p.D; ++d) acc[d] += part[d];
      }
      T* dq = static_cast<T*>(p.grad_qkv) + (b * p.T + i) * 3 * C + h * p.D;
      for (int64_t d = 0; d < p.D; ++d) dq[d] = static_cast<T>(acc[d] * p.inv_sqrt_d);
    }
  }
}

at::Tensor flash_attention_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& qkv_in,
                                        const at::Tensor& out_in, const at::Tensor& lse_in,
                                        const std::optional<at::Tensor>& key_padding_mask, int64_t n_head,
                                        double dropout_p, int64_t seed) {
  constexpr const char* op = "gpt_fast::flash_attention_backward";
  const TrainShape s = check_train_args(qkv_in, key_padding_mask, n_head, dropout_p, op);
  check_backward_args(grad_out_in, qkv_in, out_in, lse_in, s, n_head, op);
  const int64_t B = s.B, T = s.T, H = n_head, D = s.D, C = s.C;
  const bool dbl = qkv_in.scalar_type() == at::kDouble;
  const at::Tensor qkv = dbl || qkv_in.stride(-1) != 1 ? qkv_in.contiguous() : qkv_in;
  const at::Tensor grad_out = grad_out_in.contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  auto grad_qkv = qkv.new_empty({B, T, 3 * C});
  if (grad_qkv.numel() == 0) return grad_qkv;
  const at::Tensor mask = check_key_padding_mask(key_padding_mask, qkv, B, T, op);  // (B, T) or undefined
  const bool* mask_ptr = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  const int64_t BH = checked_mul(B, H, op, "B * n_head");
  checked_mul(checked_mul(BH, T, op, "B * n_head * T"), T, op, "B * n_head * T * T");  // the dropout index
  const uint32_t threshold = philox::dropout_threshold(dropout_p);

  if (dbl) {
    const flash_f64::Shape shape{B, T, H, D, mask_ptr, static_cast<uint64_t>(seed), threshold, 1.0 / (1.0 - dropout_p)};
    at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
      flash_f64::backward(shape, grad_out.const_data_ptr<double>(), qkv.const_data_ptr<double>(),
                          out.const_data_ptr<double>(), grad_qkv.mutable_data_ptr<double>(), begin, end);
    });
    return grad_qkv;
  }
  const int64_t n_kb = (T + kBlock - 1) / kBlock;
  const int64_t Dp = (D + flash_bwd::kPadTo - 1) / flash_bwd::kPadTo * flash_bwd::kPadTo;
  // partial dQ rows per (batch, head): sum over key blocks kb of (T - 64 kb)
  const int64_t rows = checked_mul(n_kb, T, op, "n_kb * T") - kBlock * n_kb * (n_kb - 1) / 2;
  const int64_t part_numel = checked_mul(checked_mul(BH, rows, op, "partial dQ rows"), Dp, op, "partial dQ size");
  auto dq_part = qkv.new_empty({part_numel}, at::kFloat);
  auto delta = qkv.new_empty({BH * T}, at::kFloat);  // BH * T checked above (times T)

  const float root_d = std::sqrt(static_cast<float>(D));
  flash_bwd::Params p{B, T, H, D, qkv.const_data_ptr(), qkv.stride(0), qkv.stride(1), grad_out.const_data_ptr(),
                      out.const_data_ptr(), lse.const_data_ptr<float>(), mask_ptr, grad_qkv.mutable_data_ptr(),
                      dq_part.mutable_data_ptr<float>(), delta.mutable_data_ptr<float>(), Dp, kLog2e / root_d,
                      1.f / root_d, 0.6931471805599453f, static_cast<uint64_t>(seed), threshold,
                      static_cast<float>(1.0 / (1.0 - dropout_p))};
  const cpu::Isa isa = cpu::cpu_isa();
  p.isa = isa;
  with_storage_type(qkv.scalar_type(), [&](auto type) {
    using Elem = decltype(type);
    at::parallel_for(0, n_kb * BH, 1, [&](int64_t begin, int64_t end) {  // n_qb = n_kb query blocks
      run_tasks_best<DeltaTasks<Elem>>(isa, p, begin, end);
    });
    at::parallel_for(0, n_kb * BH, 1, [&](int64_t begin, int64_t end) {
      run_tasks_best<BackwardTasks<Elem>>(isa, p, begin, end);
    });
    at::parallel_for(0, n_kb * BH, 1, [&](int64_t begin, int64_t end) { reduce_dq<Elem>(p, begin, end); });
  });
  return grad_qkv;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("flash_attention_backward", &flash_attention_backward_cpu); }

}  // namespace gpt_fast
