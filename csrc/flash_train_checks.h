// Argument checks of the training attention ops (flash_attention_train, flash_attention_backward), shared by their
// CPU and CUDA bindings: each message names the op and the argument.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "checks.h"

namespace gpt_fast {

struct TrainShape {
  int64_t B, T, D, C;  // C = n_head * D
};

// qkv (B, T, 3C) in fp32 / bf16 / fp16 (or float64 where allow_double: the CPU's scalar path), 1 <= D <= 128,
// dropout_p in [0, 1).
inline TrainShape check_train_args(const at::Tensor& qkv, const std::optional<at::Tensor>& key_padding_mask,
                                   int64_t n_head, double dropout_p, const char* op, bool allow_double = true) {
  check_dim(qkv, 3, op, "qkv");
  if (allow_double) check_float_or_double_dtype(qkv, op, "qkv");
  else check_float_dtype(qkv, op, "qkv");
  TORCH_CHECK(n_head > 0, op, ": n_head must be positive, got ", n_head);
  const int64_t qkv_heads = checked_mul(3, n_head, op, "3 * n_head");
  TORCH_CHECK(qkv.size(2) % qkv_heads == 0, op, ": qkv's last dimension (", qkv.size(2),
              ") must be 3 * n_head * head_dim with n_head = ", n_head);
  const int64_t D = qkv.size(2) / qkv_heads;
  TORCH_CHECK(D >= 1 && D <= 128, op, ": head size C / n_head = ", D, " must be in [1, 128]");
  TORCH_CHECK(std::isfinite(dropout_p) && dropout_p >= 0.0 && dropout_p < 1.0, op,
              ": dropout_p must lie in [0, 1), got ", dropout_p);
  if (key_padding_mask) check_same_device(*key_padding_mask, qkv, op, "key_padding_mask");
  return {qkv.size(0), qkv.size(1), D, checked_mul(n_head, D, op, "n_head * head_dim")};
}

// flash_attention_backward's saved tensors: grad_out and out (B, T, C) like qkv's dtype and device, lse (B, H, T)
// float32 on qkv's device.
inline void check_backward_args(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                                const at::Tensor& lse, const TrainShape& s, int64_t n_head, const char* op) {
  for (const auto& [t, name] : {std::pair{&grad_out, "grad_out"}, std::pair{&out, "out"}}) {
    check_dim(*t, 3, op, name);
    TORCH_CHECK(t->size(0) == s.B && t->size(1) == s.T && t->size(2) == s.C, op, ": ", name,
                " must have shape (B, T, C) = (", s.B, ", ", s.T, ", ", s.C, "), got ", t->sizes());
    check_same_device(*t, qkv, op, name);
    check_same_dtype(*t, qkv, op, name);
  }
  check_dim(lse, 3, op, "lse");
  TORCH_CHECK(lse.size(0) == s.B && lse.size(1) == n_head && lse.size(2) == s.T, op,
              ": lse must have shape (B, n_head, T) = (", s.B, ", ", n_head, ", ", s.T, "), got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == at::kFloat, op, ": lse must be float32, got ", lse.scalar_type());
  check_same_device(lse, qkv, op, "lse");
}

}  // namespace gpt_fast
