// CPU kernel for gpt_fast::flash_attention_train: flash_attention's forward for training, which also returns the
// per-row log-sum-exp that flash_attention_backward recomputes the probabilities from, and applies dropout to the
// probabilities inside the kernel.
//
//   qkv (B, T, 3C) -> out (B, T, C), lse (B, H, T) fp32: lse[b, h, i] = log2 sum_j exp(q_i k_j / sqrt(D)) over the
//   keys row i attends (-inf when there is none; its output is zeros): the log-sum-exp in base 2, the kernels' unit
//   (scores are kept as s log2(e)), so that the backward's P = exp2(s log2(e) - lse) recomputes the forward's
//   exponent exactly (a natural lse would add the rounding of two unit conversions to every probability).
//   Dropout: P[b, h, i, j] is kept when philox::keep(seed, ((b H + h) T + i) T + j, floor(p 2^32)) (csrc/philox.h)
//   and kept values are scaled by 1 / (1 - p); the softmax sums, and lse, are those of the undropped P.
//
// The fp32 engine of flash_attention (flash_kernel.h: the same code, with Params::lse and the dropout fields set)
// for fp32, bf16 and fp16 on the scalar, avx2 and avx512 tiers (not AMX); float64 on a scalar path in double
// (flash_f64.h), for gradcheck.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "cpu/flash_f64.h"
#include "cpu/flash_kernel.h"
#include "flash_train_checks.h"
#include "philox.h"

namespace gpt_fast {
namespace {
using namespace attention;
using namespace flash;

template <typename T>
struct TrainTasks {
  static GPT_FAST_INLINE void run(const Params& p, int64_t begin, int64_t end) { run_tasks<T>(p, begin, end); }
#if GPT_FAST_HAVE_X86
  static void run_avx2(const Params& p, int64_t begin, int64_t end) { flash::run_tasks_avx2<T>(p, begin, end); }
#endif
};

std::tuple<at::Tensor, at::Tensor> flash_attention_train_cpu(const at::Tensor& qkv_in,
                                                             const std::optional<at::Tensor>& key_padding_mask,
                                                             int64_t n_head, double dropout_p, int64_t seed) {
  constexpr const char* op = "gpt_fast::flash_attention_train";
  const TrainShape s = check_train_args(qkv_in, key_padding_mask, n_head, dropout_p, op);
  const at::Tensor qkv = qkv_in.scalar_type() == at::kDouble ? qkv_in.contiguous() : qkv_in;
  check_last_dim_contiguous(qkv, op, "qkv");
  const int64_t B = s.B, T = s.T, H = n_head, D = s.D, C = s.C;
  auto out = qkv.new_empty({B, T, C});
  auto lse = qkv.new_empty({B, H, T}, at::kFloat);
  if (out.numel() == 0) return {out, lse};
  const at::Tensor mask = check_key_padding_mask(key_padding_mask, qkv, B, T, op);  // (B, T) or undefined
  const bool* mask_ptr = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  const uint32_t threshold = philox::dropout_threshold(dropout_p);
  const uint64_t key = static_cast<uint64_t>(seed);

  if (qkv.scalar_type() == at::kDouble) {
    const flash_f64::Shape shape{B, T, H, D, mask_ptr, key, threshold, 1.0 / (1.0 - dropout_p)};
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      flash_f64::forward(shape, qkv.const_data_ptr<double>(), out.mutable_data_ptr<double>(),
                         lse.mutable_data_ptr<float>(), begin, end);
    });
    return {out, lse};
  }
  at::Tensor kv = qkv.scalar_type() == at::kFloat ? qkv.narrow(2, C, 2 * C)
                                                  : qkv.narrow(2, C, 2 * C).to(at::kFloat);  // (B, T, 2C)
  Params p{B, T, H, D, qkv.const_data_ptr(), qkv.stride(0), qkv.stride(1), kv.const_data_ptr<float>(),
           kv.const_data_ptr<float>() + C, kv.stride(0), kv.stride(1), nullptr, 0, mask_ptr, out.mutable_data_ptr(),
           kLog2e / std::sqrt(static_cast<float>(D))};
  p.lse = lse.mutable_data_ptr<float>();
  p.seed = key;
  p.threshold = threshold;
  p.keep_scale = static_cast<float>(1.0 / (1.0 - dropout_p));
  const int64_t tasks = (T + kBlockQ - 1) / kBlockQ * B * H;
  const cpu::Isa isa = cpu::cpu_isa();
  p.isa = isa;
  with_storage_type(qkv.scalar_type(), [&](auto type) {
    using Elem = decltype(type);
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      run_tasks_best<TrainTasks<Elem>>(isa, p, begin, end);
    });
  });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("flash_attention_train", &flash_attention_train_cpu); }

}  // namespace gpt_fast
