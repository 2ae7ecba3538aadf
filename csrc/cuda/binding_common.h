// Helpers shared by the CUDA bindings (bindings.cpp, bindings_flash_train.cpp): the launchers' element type, the
// device check and the launch-error check, each message naming the op. Torch headers; g++ only.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "cuda/launchers.h"

namespace gpt_fast::cuda_binding {

inline cuda::DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kHalf:
      return cuda::DType::kFloat16;
    default:
      return cuda::DType::kFloat32;
  }
}

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace gpt_fast::cuda_binding
