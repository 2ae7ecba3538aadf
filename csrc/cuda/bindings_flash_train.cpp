// Torch bindings of the CUDA training attention kernels (flash_attention_train.cu, flash_attention_backward.cu):
// the CPU bindings' argument checks (flash_train_checks.h, each message naming the op and argument), the CUDA limits,
// the device guard and the current stream, then the torch-free launchers. Registers
// TORCH_LIBRARY_IMPL(gpt_fast, CUDA, m) for flash_attention_train and flash_attention_backward.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/binding_common.h"
#include "cuda/launchers.h"
#include "flash_train_checks.h"

namespace gpt_fast {
namespace {

using cuda_binding::check_cuda;
using cuda_binding::check_launch;
using cuda_binding::to_dtype;

// What the CUDA kernels add to check_train_args: fp32 / bf16 / fp16 on the GPU, batch x head on gridDim.y (at most
// 65535), positions in int32, and the dropout element index (B H T T) in int64.
TrainShape check_cuda_train_args(const at::Tensor& qkv, const std::optional<at::Tensor>& key_padding_mask,
                                 int64_t n_head, double dropout_p, const char* op) {
  check_cuda(qkv, op, "qkv");
  const TrainShape s = check_train_args(qkv, key_padding_mask, n_head, dropout_p, op, /*allow_double=*/false);
  const int64_t BH = checked_mul(s.B, n_head, op, "batch * n_head");
  TORCH_CHECK(BH <= 65535, op, ": batch * n_head must be at most 65535 on CUDA, got ", s.B, " * ", n_head);
  TORCH_CHECK(s.T <= INT32_MAX / 2, op, ": qkv has too many positions (", s.T, ") for CUDA");
  checked_mul(checked_mul(BH, s.T, op, "B * n_head * T"), s.T, op, "B * n_head * T * T");  // the dropout index
  return s;
}

const uint8_t* mask_bytes(const at::Tensor& mask) {
  return mask.defined() ? static_cast<const uint8_t*>(mask.const_data_ptr()) : nullptr;
}

std::tuple<at::Tensor, at::Tensor> flash_attention_train_cuda(const at::Tensor& qkv,
                                                              const std::optional<at::Tensor>& key_padding_mask,
                                                              int64_t n_head, double dropout_p, int64_t seed) {
  constexpr const char* op = "gpt_fast::flash_attention_train";
  const TrainShape s = check_cuda_train_args(qkv, key_padding_mask, n_head, dropout_p, op);
  const c10::cuda::CUDAGuard guard(qkv.device());
  const at::Tensor qc = qkv.contiguous();
  auto out = qc.new_empty({s.B, s.T, s.C});                   // (B, T, C)
  auto lse = qc.new_empty({s.B, n_head, s.T}, at::kFloat);  // (B, H, T)
  if (out.numel() == 0) return {out, lse};
  const at::Tensor mask = check_key_padding_mask(key_padding_mask, qc, s.B, s.T, op);  // (B, T) or undefined
  check_launch(cuda::launch_flash_attention_train(
                   to_dtype(qc), qc.const_data_ptr(), mask_bytes(mask), out.mutable_data_ptr(),
                   lse.mutable_data_ptr<float>(), static_cast<int>(s.B), static_cast<int>(s.T),
                   static_cast<int>(n_head), static_cast<int>(s.D), dropout_p, static_cast<uint64_t>(seed),
                   at::cuda::getCurrentCUDAStream()),
               op);
  return {out, lse};
}

at::Tensor flash_attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                                         const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
                                         int64_t n_head, double dropout_p, int64_t seed) {
  constexpr const char* op = "gpt_fast::flash_attention_backward";
  const TrainShape s = check_cuda_train_args(qkv, key_padding_mask, n_head, dropout_p, op);
  check_backward_args(grad_out, qkv, out, lse, s, n_head, op);
  const c10::cuda::CUDAGuard guard(qkv.device());
  const at::Tensor qc = qkv.contiguous(), gc = grad_out.contiguous(), oc = out.contiguous(), lc = lse.contiguous();
  auto grad_qkv = qc.new_empty({s.B, s.T, 3 * s.C});  // (B, T, 3C), every element written
  if (grad_qkv.numel() == 0) return grad_qkv;
  const at::Tensor mask = check_key_padding_mask(key_padding_mask, qc, s.B, s.T, op);  // (B, T) or undefined
  const int B = static_cast<int>(s.B), T = static_cast<int>(s.T), H = static_cast<int>(n_head);
  const size_t bytes = cuda::flash_attention_backward_workspace_bytes(B, T, H);
  auto workspace = qc.new_empty({static_cast<int64_t>(bytes / sizeof(float))}, at::kFloat);
  check_launch(cuda::launch_flash_attention_backward(
                   to_dtype(qc), gc.const_data_ptr(), qc.const_data_ptr(), oc.const_data_ptr(),
                   lc.const_data_ptr<float>(), mask_bytes(mask), grad_qkv.mutable_data_ptr(),
                   workspace.mutable_data_ptr(), B, T, H, static_cast<int>(s.D), dropout_p,
                   static_cast<uint64_t>(seed), at::cuda::getCurrentCUDAStream()),
               op);
  return grad_qkv;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CUDA, m) {
  m.impl("flash_attention_train", &flash_attention_train_cuda);
  m.impl("flash_attention_backward", &flash_attention_backward_cuda);
}

}  // namespace gpt_fast
