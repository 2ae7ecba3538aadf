// The gpt_fast op library: one schema per op, defined here and nowhere else.
// Backend files (csrc/cpu/*.cpp, csrc/cuda/*.cpp) add kernels with TORCH_LIBRARY_IMPL(gpt_fast, <Key>, m).
// Python fake (meta) kernels live in gpt_fast/ops/, one file per op.
#include <Python.h>
#include <torch/library.h>

// Importing gpt_fast._C from Python runs the static registrations below; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "gpt_fast custom ops (see torch.ops.gpt_fast)", -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(gpt_fast, m) {
  // layer_norm(x + dropout(residual [+ bias])) over the last dim; fp32 statistics. x, residual: (..., C); the rest
  // (C,). dropout_p in [0, 1); the mask is Philox's under seed (csrc/philox.h), element n = row * C + col.
  m.def("add_layernorm(Tensor x, Tensor residual, Tensor? bias, Tensor weight, Tensor ln_bias, float eps, "
        "float dropout_p=0.0, int seed=0) -> Tensor");
  // gelu_tanh(x + bias); x: (..., N), bias: (N,).
  m.def("bias_gelu(Tensor x, Tensor bias) -> Tensor");
  // --- backward ops (issue 13): each takes the forward's inputs and the output's gradient ---
  // gelu_tanh'(x + bias) * grad_out: grad_x (..., N) in x's dtype; grad_bias = grad_x summed over rows (autograd).
  m.def("bias_gelu_backward(Tensor grad_out, Tensor x, Tensor bias) -> Tensor");
  // layer_norm backward with the statistics recomputed: returns (grad_v, grad_weight, grad_ln_bias, grad_residual),
  // v = x + dropout(residual [+ bias]) (the forward's dropout_p and seed: the same mask); grad_v (..., C) is x's
  // gradient; grad_residual (..., C) = grad_v * keep / (1 - p) is residual's (summed over rows: bias's); with
  // dropout_p = 0 it is empty (0,) and grad_v serves residual and bias too. grad_weight, grad_ln_bias (C,).
  m.def("add_layernorm_backward(Tensor grad_out, Tensor x, Tensor residual, Tensor? bias, Tensor weight, float eps, "
        "float dropout_p=0.0, int seed=0) -> (Tensor, Tensor, Tensor, Tensor)");
  // flash_attention's backward (FlashAttention-2: P recomputed from lse): grad_qkv (B, T, 3C) in qkv's dtype, from
  // grad_out and out (B, T, C), lse (B, H, T) fp32 and the forward's dropout_p and seed (the same mask).
  m.def("flash_attention_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, Tensor? key_padding_mask, "
        "int n_head, float dropout_p, int seed) -> Tensor");
  // --- end of backward ops ---
  // Causal attention on the packed c_attn output. qkv: (B, T, 3C) holding q | k | v, each (B, T, H, D).
  // key_padding_mask: (B, T) bool, true = attend; a query row with no key to attend gives zeros. Returns (B, T, C).
  m.def("flash_attention(Tensor qkv, Tensor? key_padding_mask, int n_head) -> Tensor");
  // flash_attention for training: also the per-row log-sum-exp in base 2, lse (B, H, T) fp32 = log2 sum_j exp(s_ij)
  // (-inf for a row with no key), and
  // dropout on the probabilities (p in [0, 1)): element ((b H + h) T + i) T + j kept by csrc/philox.h's mask under
  // seed, scaled by 1 / (1 - p). Returns (out (B, T, C), lse).
  m.def("flash_attention_train(Tensor qkv, Tensor? key_padding_mask, int n_head, float dropout_p, int seed) "
        "-> (Tensor, Tensor)");
  // Decode attention: qkv (B, S, 3C) for S new tokens per row; k_cache, v_cache (B, H, Tmax, D);
  // cache_lengths (B,) int64 = tokens already cached per row. Writes the new keys/values at
  // [len, len + S) and attends causally over [0, len + i]. Returns (B, S, C).
  m.def("decode_attention(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_lengths, int n_head) -> Tensor");
  // Repack a linear weight once for linear_small_m. weight: (K, N) if in_out_layout (Conv1D) else (N, K) (nn.Linear,
  // tied LM head). Returns (ceil(N / 16), K, 16) in weight's dtype: 16-column blocks, each contiguous over K.
  m.def("pack_linear_weight(Tensor weight, bool in_out_layout) -> Tensor");
  // Few-row (decode) linear: x (..., K) @ W + bias, then optional gelu_tanh, then + residual (..., N); W given packed
  // by pack_linear_weight, out_features = N. fp32 accumulation; returns (..., N) in x's dtype.
  m.def("linear_small_m(Tensor x, Tensor packed_weight, int out_features, Tensor? bias, Tensor? residual, bool gelu) -> Tensor");
  // Weight-only int8 / int4 linear weight repacked once for linear_quantized, on qweight's device, from the logical
  // format of gpt_fast/ops/reference.py: bits 8: qweight int8 (N, K), scales fp32 (N, 1), zeros None; bits 4:
  // qweight uint8 (N, K / 2) (low nibble first), scales and zeros bf16 (N, K / group_size). Returns a contiguous uint8
  // tensor: (ceil(N / 16), K + 4, 16) for bits 8, (ceil(N / 16), K / G, 8 G + 64) for bits 4 (csrc/cpu/quantized_layout.h).
  m.def("pack_quantized_weight(Tensor qweight, Tensor scales, Tensor? zeros, int bits, int group_size) -> Tensor");
  // The (N, K) weight in dtype (float32, bfloat16, float16 or float64) that a weight in that logical format stands for:
  // q * scale (bits 8) or q * scale + zero (bits 4), rounded in float32, then to dtype; for the quantized layers'
  // prefill GEMMs. CPU only (elsewhere gpt_fast/ops/dequantize_linear_weight.py runs it as PyTorch ops).
  m.def("dequantize_linear_weight(Tensor qweight, Tensor scales, Tensor? zeros, int bits, int group_size, ScalarType dtype) -> Tensor");
  // x (..., K) as float32 with each group of group_size consecutive values rounded to int8 by its own scale
  // s = max |x| / 127: q = round half to even (x / s) in [-127, 127], x = q * s (an all-zero group stays 0, one with a
  // NaN or an infinity becomes NaN): int4-a8's and int8-a8's activations for the quantized layers' prefill GEMMs.
  // CPU only.
  m.def("round_activations(Tensor x, int group_size) -> Tensor");
  // Few-row (decode) weight-only quantized linear: [gelu_tanh](x (..., K) @ W.T + bias) [+ residual (..., N)], W given
  // by pack_quantized_weight for (out_features, K, bits, group_size), dequantized in registers, fp32 math; returns
  // (..., N) in x's dtype (fp32, bf16 or fp16; bias and residual in that dtype too). x_bits 8: x is first rounded to
  // int8 per group of group_size k, each with its own scale (reference.round_activations); with bits 8 group_size is
  // then x's group alone (int8-a8).
  m.def("linear_quantized(Tensor x, Tensor packed, int out_features, int bits, int group_size, Tensor? bias, Tensor? residual, bool gelu, int x_bits=0) -> Tensor");
}
