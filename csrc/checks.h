// Argument checks shared by every kernel binding: each message names the op and the argument.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace gpt_fast {

// Size arithmetic on user-controlled integers (n_head, out_features, cache_lengths, tensor sizes) is done in
// checked int64: an overflow is a RuntimeError naming the op and the quantity, never a wrapped value that slips
// past a range check. `what` describes the product or sum, e.g. "3 * n_head".
inline int64_t checked_mul(int64_t a, int64_t b, const char* op, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_mul_overflow(a, b, &r), op, ": ", what, " overflows int64 (", a, " * ", b, ")");
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* op, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_add_overflow(a, b, &r), op, ": ", what, " overflows int64 (", a, " + ", b, ")");
  return r;
}

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

// t has x's shape, device and dtype (a residual, a grad_out), named in the error as `name`.
inline void check_like(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " shape ", t.sizes(), " must equal x shape ", x.sizes());
  check_same_device(t, x, op, name);
  check_same_dtype(t, x, op, name);
}

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": ", name,
              " must be float32, bfloat16 or float16, got ", s);
}

// The backward ops also take float64 on the CPU (scalar path in double), for gradcheck.
inline void check_float_or_double_dtype(const at::Tensor& t, const char* op, const char* name) {
  auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf || s == at::kDouble, op, ": ", name,
              " must be float32, bfloat16, float16 or float64, got ", s);
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
  check_like(residual, x, op, "residual");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, op, ": x must have a non-empty last dimension");
  check_vector(weight, C, x, op, "weight");
  check_vector(ln_bias, C, x, op, "ln_bias");
  if (bias) check_vector(*bias, C, x, op, "bias");
  TORCH_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be a finite non-negative number, got ", eps);
  return C;
}

// A dropout probability of the kernels (csrc/philox.h's contract): 0 <= p < 1 (NaN fails).
inline void check_dropout_p(double p, const char* op) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": dropout_p must lie in [0, 1), got ", p);
}

// linear_small_m's out_features N against a contiguous packed weight (NB, K, 16) (csrc/cpu/linear_layout.h; the
// caller has checked NB = ceil(N / 16) and the dtype is float32, bfloat16 or float16). The shape leaves N free in
// (16 (NB - 1), 16 NB]; the padding pins it down: pack_linear_weight fills the columns past its N with -0.0 and
// turns every -0.0 of the weight itself into +0.0, so at k = 0 of the last block
//   - the lanes [N - 16 (NB - 1), 16) must be -0.0, else they hold weights and N is smaller than the packed one
//     (columns would be silently dropped);
//   - the lane of column N - 1 must not be -0.0, else it is padding and N is larger than the packed one (made-up
//     columns would be returned).
// Exact for weights packed by pack_linear_weight, and at most 16 reads.
template <typename T>
inline void check_packed_columns(const T* last_block, int64_t real, int64_t N, const char* op) {
  const auto is_padding = [](T v) { return static_cast<float>(v) == 0.f && std::signbit(static_cast<float>(v)); };
  for (int64_t j = real; j < 16; ++j) {
    TORCH_CHECK(is_padding(last_block[j]), op, ": out_features = ", N, " is smaller than packed_weight's: its column ",
                N - real + j, " holds a weight, not the padding (-0.0) pack_linear_weight writes past its out_features");
  }
  TORCH_CHECK(!is_padding(last_block[real - 1]), op, ": out_features = ", N, " is larger than packed_weight's: its column ",
              N - 1, " is the padding (-0.0) pack_linear_weight writes past its out_features");
}

inline void check_packed_out_features(const at::Tensor& packed, int64_t N, const char* op) {
  const int64_t NB = packed.size(0), K = packed.size(1), real = N - 16 * (NB - 1);  // real columns in the last block
  TORCH_CHECK(NB > 0 && K > 0 && packed.size(2) == 16 && real >= 1 && real <= 16 && packed.is_contiguous(), op,
              ": internal: check_packed_out_features on a packed_weight of shape ", packed.sizes());
  const int64_t offset = (NB - 1) * K * 16;
  switch (packed.scalar_type()) {
    case at::kFloat:
      return check_packed_columns(packed.const_data_ptr<float>() + offset, real, N, op);
    case at::kBFloat16:
      return check_packed_columns(packed.const_data_ptr<c10::BFloat16>() + offset, real, N, op);
    case at::kHalf:
      return check_packed_columns(packed.const_data_ptr<c10::Half>() + offset, real, N, op);
    default:
      TORCH_CHECK(false, op, ": packed_weight must be float32, bfloat16 or float16, got ", packed.scalar_type());
  }
}

// The packed qkv (B, T, 3C) of the attention ops, C = n_head * head_dim, float. Returns head_dim (each backend
// checks the range it supports).
inline int64_t check_packed_qkv(const at::Tensor& qkv, int64_t n_head, const char* op) {
  check_dim(qkv, 3, op, "qkv");
  check_float_dtype(qkv, op, "qkv");
  TORCH_CHECK(n_head > 0, op, ": n_head must be positive, got ", n_head);
  const int64_t qkv_heads = checked_mul(3, n_head, op, "3 * n_head");
  TORCH_CHECK(qkv.size(2) % qkv_heads == 0, op, ": qkv's last dimension (", qkv.size(2),
              ") must be 3 * n_head * head_dim with n_head = ", n_head);
  return qkv.size(2) / qkv_heads;
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

// decode_attention's cache_lengths: (B,) int64 on qkv's device (the range is checked by each backend, see
// check_cache_range).
inline void check_cache_lengths(const at::Tensor& lengths, const at::Tensor& qkv, int64_t B, const char* op) {
  check_dim(lengths, 1, op, "cache_lengths");
  check_same_device(lengths, qkv, op, "cache_lengths");
  TORCH_CHECK(lengths.scalar_type() == at::kLong, op, ": cache_lengths must be int64, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.size(0) == B, op, ": cache_lengths must have B = ", B, " elements, got ", lengths.size(0));
}

// Every row's new positions [len, len + S) lie inside a cache of Tmax positions: 0 <= len <= Tmax - S. Written
// without len + S, which wraps for len near INT64_MAX (Tmax and S are sizes, >= 0, so Tmax - S cannot overflow).
// lengths: B host values. An IndexError, raised before anything is written.
inline void check_cache_range(const int64_t* lengths, int64_t B, int64_t S, int64_t Tmax, const char* op) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_INDEX(lengths[b] >= 0 && lengths[b] <= Tmax - S, op, ": cache_lengths[", b, "] = ", lengths[b],
                      " with ", S, " new tokens falls outside the cache of Tmax = ", Tmax, " positions");
  }
}

}  // namespace gpt_fast
