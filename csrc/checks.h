// Argument checks shared by every kernel binding: each message names the op and the argument.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

}  // namespace gpt_fast
