// Torch bindings of the gpt_fast CUDA kernels: argument checks (each naming the op and argument), the device
// guard, the current stream, then the torch-free launchers (launchers.h) and a launch-error check.
// Registers TORCH_LIBRARY_IMPL(gpt_fast, CUDA, m) for add_layernorm, bias_gelu, flash_attention, decode_attention,
// the backward ops bias_gelu_backward, add_layernorm_backward, pack_quantized_weight (the device-agnostic ATen packer
// of csrc/cpu/pack_quantized_weight.cpp) and linear_quantized; the training attention ops are bound in
// bindings_flash_train.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/pack_quantized_weight.h"
#include "cpu/quantized_layout.h"
#include "cuda/binding_common.h"
#include "cuda/launchers.h"

namespace gpt_fast {
namespace {

using cuda_binding::check_cuda;
using cuda_binding::check_launch;
using cuda_binding::to_dtype;

at::Tensor add_layernorm_cuda(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& bias,
                              const at::Tensor& weight, const at::Tensor& ln_bias, double eps, double dropout_p,
                              int64_t seed) {
  constexpr const char* op = "gpt_fast::add_layernorm";
  check_cuda(x, op, "x");
  const int64_t C = check_add_layernorm_args(x, residual, bias, weight, ln_bias, eps, op);
  check_dropout_p(dropout_p, op);
  TORCH_CHECK(C <= INT32_MAX, op, ": x's last dimension must fit in int32, got ", C);

  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous(), rc = residual.contiguous(), wc = weight.contiguous(), bc = ln_bias.contiguous();
  at::Tensor biasc = bias ? bias->contiguous() : at::Tensor();
  auto out = xc.new_empty(xc.sizes());
  check_launch(cuda::launch_add_layernorm(to_dtype(x), xc.const_data_ptr(), rc.const_data_ptr(),
                                          bias ? biasc.const_data_ptr() : nullptr, wc.const_data_ptr(),
                                          bc.const_data_ptr(), out.mutable_data_ptr(), xc.numel() / C,
                                          static_cast<int>(C), static_cast<float>(eps), dropout_p,
                                          static_cast<uint64_t>(seed), at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

at::Tensor bias_gelu_cuda(const at::Tensor& x, const at::Tensor& bias) {
  constexpr const char* op = "gpt_fast::bias_gelu";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  check_cuda(x, op, "x");
  check_float_dtype(x, op, "x");
  const int64_t N = x.size(-1);
  TORCH_CHECK(N > 0, op, ": x must have a non-empty last dimension");
  check_vector(bias, N, x, op, "bias");

  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous(), bc = bias.contiguous();
  auto out = xc.new_empty(xc.sizes());
  check_launch(cuda::launch_bias_gelu(to_dtype(x), xc.const_data_ptr(), bc.const_data_ptr(), out.mutable_data_ptr(),
                                      xc.numel(), N, at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

// --- backward ops (issue 13) ---
at::Tensor bias_gelu_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& bias) {
  constexpr const char* op = "gpt_fast::bias_gelu_backward";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  check_cuda(x, op, "x");
  check_float_dtype(x, op, "x");
  check_like(grad_out, x, op, "grad_out");
  const int64_t N = x.size(-1);
  TORCH_CHECK(N > 0, op, ": x must have a non-empty last dimension");
  check_vector(bias, N, x, op, "bias");

  const c10::cuda::CUDAGuard guard(x.device());
  auto gc = grad_out.contiguous(), xc = x.contiguous(), bc = bias.contiguous();
  auto grad_x = xc.new_empty(xc.sizes());
  check_launch(cuda::launch_bias_gelu_backward(to_dtype(x), gc.const_data_ptr(), xc.const_data_ptr(),
                                               bc.const_data_ptr(), grad_x.mutable_data_ptr(), xc.numel(), N,
                                               at::cuda::getCurrentCUDAStream()),
               op);
  return grad_x;
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layernorm_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& residual,
    const std::optional<at::Tensor>& bias, const at::Tensor& weight, double eps, double dropout_p, int64_t seed) {
  constexpr const char* op = "gpt_fast::add_layernorm_backward";
  check_cuda(x, op, "x");
  // the forward's checks with weight standing in for ln_bias, then grad_out like x
  const int64_t C = check_add_layernorm_args(x, residual, bias, weight, weight, eps, op);
  check_like(grad_out, x, op, "grad_out");
  check_dropout_p(dropout_p, op);
  TORCH_CHECK(C <= INT32_MAX, op, ": x's last dimension must fit in int32, got ", C);

  const c10::cuda::CUDAGuard guard(x.device());
  auto gc = grad_out.contiguous(), xc = x.contiguous(), rc = residual.contiguous(), wc = weight.contiguous();
  at::Tensor biasc = bias ? bias->contiguous() : at::Tensor();
  const int64_t rows = xc.numel() / C;
  auto grad_v = xc.new_empty(xc.sizes());
  auto grad_weight = xc.new_empty({C}), grad_ln_bias = xc.new_empty({C});
  // (..., C) with dropout, else (0,): grad_v is residual's gradient then
  auto grad_residual = dropout_p > 0 ? xc.new_empty(xc.sizes()) : xc.new_empty({0});
  const size_t bytes = cuda::add_layernorm_backward_workspace_bytes(rows, static_cast<int>(C));
  auto workspace = xc.new_empty({static_cast<int64_t>(bytes / sizeof(float))}, at::kFloat);
  check_launch(cuda::launch_add_layernorm_backward(
                   to_dtype(x), gc.const_data_ptr(), xc.const_data_ptr(), rc.const_data_ptr(),
                   bias ? biasc.const_data_ptr() : nullptr, wc.const_data_ptr(), grad_v.mutable_data_ptr(),
                   grad_weight.mutable_data_ptr(), grad_ln_bias.mutable_data_ptr(),
                   dropout_p > 0 ? grad_residual.mutable_data_ptr() : nullptr, workspace.mutable_data_ptr(), rows,
                   static_cast<int>(C), static_cast<float>(eps), dropout_p, static_cast<uint64_t>(seed),
                   at::cuda::getCurrentCUDAStream()),
               op);
  return {grad_v, grad_weight, grad_ln_bias, grad_residual};
}
// --- end of backward ops ---

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }

// The attention kernels read qkv with 128-bit loads: contiguous and 16-byte aligned (a copy when it is not).
at::Tensor aligned_contiguous(const at::Tensor& t) {
  auto c = t.contiguous();
  return aligned16(c) ? c : c.clone();
}

// The packed qkv on CUDA: (B, T, 3C) with C = n_head * D, D a multiple of 8 and at most 128.
int64_t check_qkv(const at::Tensor& qkv, int64_t n_head, const char* op) {
  check_cuda(qkv, op, "qkv");
  const int64_t D = check_packed_qkv(qkv, n_head, op);
  TORCH_CHECK(D > 0 && D % 8 == 0 && D <= cuda::kMaxHeadDim, op,
              ": head_dim (qkv last dimension / (3 * n_head)) must be a positive multiple of 8 up to ",
              cuda::kMaxHeadDim, " on CUDA, got ", D);
  // The kernels put batch x head on gridDim.y (at most 65535 blocks).
  TORCH_CHECK(checked_mul(qkv.size(0), n_head, op, "batch * n_head") <= 65535, op,
              ": batch * n_head must be at most 65535 on CUDA, got ", qkv.size(0), " * ", n_head);
  TORCH_CHECK(qkv.size(1) <= INT32_MAX / 2, op, ": qkv has too many positions");
  return D;
}

at::Tensor flash_attention_cuda(const at::Tensor& qkv, const std::optional<at::Tensor>& key_padding_mask,
                                int64_t n_head) {
  constexpr const char* op = "gpt_fast::flash_attention";
  const int64_t D = check_qkv(qkv, n_head, op);
  const int64_t B = qkv.size(0), T = qkv.size(1);
  const at::Tensor mask = check_key_padding_mask(key_padding_mask, qkv, B, T, op);  // (B, T) or undefined
  const c10::cuda::CUDAGuard guard(qkv.device());
  auto qc = aligned_contiguous(qkv);
  auto out = qc.new_empty({B, T, checked_mul(n_head, D, op, "n_head * head_dim")});  // (B, T, C)
  check_launch(cuda::launch_flash_attention(to_dtype(qkv), qc.const_data_ptr(),
                                            mask.defined() ? static_cast<const uint8_t*>(mask.const_data_ptr()) : nullptr,
                                            out.mutable_data_ptr(), static_cast<int>(B), static_cast<int>(T),
                                            static_cast<int>(n_head), static_cast<int>(D),
                                            at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

void check_cache(const at::Tensor& cache, const at::Tensor& qkv, int64_t B, int64_t H, int64_t D, const char* op,
                 const char* name) {
  check_cache_shape(cache, qkv, B, H, D, op, name);
  TORCH_CHECK(cache.is_contiguous(), op, ": ", name, " must be contiguous (it is written in place), got strides ",
              cache.strides());
}

at::Tensor decode_attention_cuda(const at::Tensor& qkv, at::Tensor& k_cache, at::Tensor& v_cache,
                                 const at::Tensor& cache_lengths, int64_t n_head) {
  constexpr const char* op = "gpt_fast::decode_attention";
  const int64_t D = check_qkv(qkv, n_head, op);
  const int64_t B = qkv.size(0), S = qkv.size(1);
  check_cache(k_cache, qkv, B, n_head, D, op, "k_cache");
  check_cache(v_cache, qkv, B, n_head, D, op, "v_cache");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": v_cache shape ", v_cache.sizes(), " must equal k_cache shape ",
              k_cache.sizes());
  const int64_t Tmax = k_cache.size(2);
  TORCH_CHECK(Tmax <= INT32_MAX, op, ": the cache is too long");
  check_cache_lengths(cache_lengths, qkv, B, op);
  const c10::cuda::CUDAGuard guard(qkv.device());
  // The lengths stay on the device: reading them here would stall every decode step (a device-to-host sync per
  // layer). The kernel checks each row itself: a row with len < 0 or len > Tmax - S gets NaN outputs and no cache
  // write (tests/test_decode_host_sync.py keeps this binding free of host reads).
  auto lengths = cache_lengths.contiguous();
  auto qc = aligned_contiguous(qkv);
  TORCH_CHECK(aligned16(k_cache) && aligned16(v_cache), op, ": k_cache and v_cache must be 16-byte aligned");
  auto out = qc.new_empty({B, S, checked_mul(n_head, D, op, "n_head * head_dim")});  // (B, S, C)
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto plan = cuda::plan_decode_attention(static_cast<int>(B), static_cast<int>(S), static_cast<int>(n_head),
                                                static_cast<int>(D), static_cast<int>(Tmax), sms);
  at::Tensor workspace;
  if (plan.workspace_bytes > 0)
    workspace = qc.new_empty({static_cast<int64_t>(plan.workspace_bytes / sizeof(float))}, at::kFloat);
  check_launch(cuda::launch_decode_attention(to_dtype(qkv), plan, qc.const_data_ptr(), k_cache.mutable_data_ptr(),
                                             v_cache.mutable_data_ptr(), lengths.const_data_ptr<int64_t>(),
                                             out.mutable_data_ptr(), workspace.defined() ? workspace.mutable_data_ptr() : nullptr,
                                             static_cast<int>(B), static_cast<int>(S), static_cast<int>(n_head),
                                             static_cast<int>(D), static_cast<int>(Tmax),
                                             at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

at::Tensor pack_quantized_weight_cuda(const at::Tensor& qweight, const at::Tensor& scales,
                                      const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size) {
  check_cuda(qweight, "gpt_fast::pack_quantized_weight", "qweight");
  const c10::cuda::CUDAGuard guard(qweight.device());
  return pack_quantized_weight_aten(qweight, scales, zeros, bits, group_size);
}

// The CPU binding's checks except the exact N against the padding marker, which would need a device read (a sync):
// here N is checked up to its block of 16 columns by the packed shape. x_bits 8: x rounded per group by ATen ops
// (round_activations_aten), then the kernel in float32 (bias and residual too) and the result back in x's dtype.
at::Tensor linear_quantized_cuda(const at::Tensor& x, const at::Tensor& packed, int64_t out_features, int64_t bits,
                                 int64_t group_size, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& residual, bool gelu, int64_t x_bits) {
  constexpr const char* op = "gpt_fast::linear_quantized";
  check_cuda(x, op, "x");
  const int64_t K = check_linear_quantized_args(x, packed, out_features, bits, group_size, x_bits, op);
  const int64_t N = out_features;
  TORCH_CHECK_VALUE(K <= INT32_MAX && quant::blocks(N) <= INT32_MAX, op, ": K and ceil(N / 16) must fit in int32");
  const std::vector<int64_t> out_shape = check_linear_quantized_epilogue(x, N, bias, residual, op);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x_bits == 8) {
    auto as_float = [](const std::optional<at::Tensor>& t) {
      return t ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
    };
    return linear_quantized_cuda(round_activations_aten(x, group_size), packed, N, bits, group_size, as_float(bias),
                                 as_float(residual), gelu, 0)
        .to(x.scalar_type());
  }
  const int64_t M = x.numel() / K;
  auto out = x.new_empty(out_shape);
  if (M == 0) return out;
  const auto xc = x.reshape({M, K}).contiguous();
  at::Tensor res2, bias_c = bias ? bias->contiguous() : at::Tensor();
  if (residual) {
    res2 = residual->reshape({M, N});
    if (res2.stride(1) != 1) res2 = res2.contiguous();
  }
  check_launch(cuda::launch_linear_quantized(to_dtype(x), xc.const_data_ptr(), packed.const_data_ptr<uint8_t>(),
                                             bias ? bias_c.const_data_ptr() : nullptr,
                                             residual ? res2.const_data_ptr() : nullptr, out.mutable_data_ptr(), M,
                                             static_cast<int>(K), N, static_cast<int>(bits),
                                             static_cast<int>(bits == 4 ? group_size : 0),
                                             residual ? res2.stride(0) : 0, gelu, at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CUDA, m) {
  m.impl("add_layernorm", &add_layernorm_cuda);
  m.impl("bias_gelu", &bias_gelu_cuda);
  m.impl("flash_attention", &flash_attention_cuda);
  m.impl("decode_attention", &decode_attention_cuda);
  m.impl("bias_gelu_backward", &bias_gelu_backward_cuda);
  m.impl("add_layernorm_backward", &add_layernorm_backward_cuda);
  m.impl("pack_quantized_weight", &pack_quantized_weight_cuda);
  m.impl("linear_quantized", &linear_quantized_cuda);
}

}  // namespace gpt_fast
