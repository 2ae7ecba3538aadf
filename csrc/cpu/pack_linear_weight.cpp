// CPU kernel for gpt_fast::pack_linear_weight: repacks a linear weight once (at load time) into the blocked layout
// of csrc/cpu/linear_layout.h that gpt_fast::linear_small_m reads at memory bandwidth.
// weight: (K, N) when in_out_layout (transformers' Conv1D, GPT-1's c_attn / c_proj / c_fc) or (N, K) otherwise
// (nn.Linear, the tied LM head = token embedding). Returns a new contiguous (ceil(N / 16), K, 16) tensor, same dtype,
// padded with -0.0 past N (and every -0.0 of the weight made +0.0).
// Plain ATen copies: it runs once per layer, so clarity beats speed here.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/linear_layout.h"

namespace gpt_fast {
namespace {

at::Tensor pack_linear_weight_cpu(const at::Tensor& weight, bool in_out_layout) {
  constexpr const char* op = "gpt_fast::pack_linear_weight";
  check_dim(weight, 2, op, "weight");
  check_float_dtype(weight, op, "weight");
  const at::Tensor kn = in_out_layout ? weight : weight.t();  // (K, N)
  const int64_t K = kn.size(0), N = kn.size(1);
  TORCH_CHECK(K > 0 && N > 0, op, ": weight must be non-empty, got shape ", weight.sizes());
  const int64_t blocks = cpu::linear_blocks(N);
  const int64_t width = checked_mul(blocks, cpu::kLinearBlockN, op, "16 * ceil(N / 16)");
  checked_mul(checked_mul(K, width, op, "the packed size K * 16 * ceil(N / 16)"), weight.element_size(), op,
              "the packed size in bytes");
  // (K, 16 * blocks): the columns past N are -0.0 and no weight is (-0.0 + 0.0 = +0.0), the marks linear_small_m
  // checks its out_features against (csrc/cpu/linear_layout.h).
  auto padded = weight.new_full({K, width}, -0.0);
  padded.narrow(1, 0, N).copy_(kn).add_(0.0);
  return padded.view({K, blocks, cpu::kLinearBlockN}).permute({1, 0, 2}).contiguous();  // (blocks, K, 16)
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("pack_linear_weight", &pack_linear_weight_cpu); }

}  // namespace gpt_fast
