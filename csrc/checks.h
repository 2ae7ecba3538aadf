// Argument checks shared by every kernel binding: each message names the op and the argument.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

namespace gpt_fast {

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the input is on ", ref.device());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but the input has dtype ", ref.scalar_type());
}

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": ", name,
              " must be float32, bfloat16 or float16, got ", s);
}

inline void check_vector(const at::Tensor& t, int64_t size, const at::Tensor& ref, const char* op, const char* name) {
  check_dim(t, 1, op, name);
  TORCH_CHECK(t.size(0) == size, op, ": ", name, " must have ", size, " elements, got ", t.size(0));
  check_same_device(t, ref, op, name);
  check_same_dtype(t, ref, op, name);
}

inline void check_last_dim_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.stride(-1) == 1, op, ": ", name, " must be contiguous in its last dimension, got strides ", t.strides());
}

// The arguments of add_layernorm shared by its backends: x (..., C) float, residual like x, weight/ln_bias (and
// bias when given) of C elements, eps finite and >= 0. Returns C.
inline int64_t check_add_layernorm_args(const at::Tensor& x, const at::Tensor& residual,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& weight,
                                        const at::Tensor& ln_bias, double eps, const char* op) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  check_float_dtype(x, op, "x");
  TORCH_CHECK(residual.sizes() == x.sizes(), op, ": residual shape ", residual.sizes(), " must equal x shape ",
              x.sizes());
  check_same_device(residual, x, op, "residual");
  check_same_dtype(residual, x, op, "residual");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, op, ": x must have a non-empty last dimension");
  check_vector(weight, C, x, op, "weight");
  check_vector(ln_bias, C, x, op, "ln_bias");
  if (bias) check_vector(*bias, C, x, op, "bias");
  TORCH_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be a finite non-negative number, got ", eps);
  return C;
}

// The packed qkv (B, T, 3C) of the attention ops, C = n_head * head_dim, float. Returns head_dim (each backend
// checks the range it supports).
inline int64_t check_packed_qkv(const at::Tensor& qkv, int64_t n_head, const char* op) {
  check_dim(qkv, 3, op, "qkv");
  check_float_dtype(qkv, op, "qkv");
  TORCH_CHECK(n_head > 0, op, ": n_head must be positive, got ", n_head);
  TORCH_CHECK(qkv.size(2) % (3 * n_head) == 0, op, ": qkv's last dimension (", qkv.size(2),
              ") must be 3 * n_head * head_dim with n_head = ", n_head);
  return qkv.size(2) / (3 * n_head);
}

// flash_attention's optional key_padding_mask: (B, T) bool on qkv's device, true = attend. Returns it contiguous
// (undefined when absent).
inline at::Tensor check_key_padding_mask(const std::optional<at::Tensor>& mask, const at::Tensor& qkv, int64_t B,
                                         int64_t T, const char* op) {
  if (!mask) return {};
  check_dim(*mask, 2, op, "key_padding_mask");
  check_same_device(*mask, qkv, op, "key_padding_mask");
  TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": key_padding_mask must be bool, got ", mask->scalar_type());
  TORCH_CHECK(mask->size(0) == B && mask->size(1) == T, op, ": key_padding_mask must have shape (B, T) = (", B, ", ",
              T, "), got ", mask->sizes());
  return mask->contiguous();
}

// A KV cache of decode_attention: (B, n_head, Tmax, head_dim) with qkv's device and dtype (each backend checks the
// strides it needs).
inline void check_cache_shape(const at::Tensor& cache, const at::Tensor& qkv, int64_t B, int64_t H, int64_t D,
                              const char* op, const char* name) {
  check_dim(cache, 4, op, name);
  check_same_device(cache, qkv, op, name);
  check_same_dtype(cache, qkv, op, name);
  TORCH_CHECK(cache.size(0) == B && cache.size(1) == H && cache.size(3) == D, op, ": ", name,
              " must have shape (B, n_head, Tmax, head_dim) = (", B, ", ", H, ", Tmax, ", D, "), got ", cache.sizes());
}

// decode_attention's cache_lengths: (B,) int64 on qkv's device (the range is checked by each backend).
inline void check_cache_lengths(const at::Tensor& lengths, const at::Tensor& qkv, int64_t B, const char* op) {
  check_dim(lengths, 1, op, "cache_lengths");
  check_same_device(lengths, qkv, op, "cache_lengths");
  TORCH_CHECK(lengths.scalar_type() == at::kLong, op, ": cache_lengths must be int64, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.size(0) == B, op, ": cache_lengths must have B = ", B, " elements, got ", lengths.size(0));
}

}  // namespace gpt_fast
