// CPU kernel for gpt_fast::pack_linear_weight: repacks a linear weight once (at load time) into the blocked layout
// of csrc/cpu/linear_layout.h that gpt_fast::linear_small_m reads at memory bandwidth.
// weight: (K, N) when in_out_layout (transformers' Conv1D, GPT-1's c_attn / c_proj / c_fc) or (N, K) otherwise
// (nn.Linear, the tied LM head = token embedding). Returns a new contiguous (ceil(N / 16), K, 16) tensor, same dtype.
// Plain ATen copies: it runs once per layer, so clarity beats speed here.
#include <ATen/ATen.h>
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
  auto padded = at::zeros({K, blocks * cpu::kLinearBlockN}, weight.options());  // (K, 16 * blocks)
  padded.narrow(1, 0, N).copy_(kn);
  return padded.view({K, blocks, cpu::kLinearBlockN}).permute({1, 0, 2}).contiguous();  // (blocks, K, 16)
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("pack_linear_weight", &pack_linear_weight_cpu); }

}  // namespace gpt_fast
