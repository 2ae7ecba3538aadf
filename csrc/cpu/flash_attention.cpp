// CPU kernel for gpt_fast::flash_attention: causal self-attention on the packed c_attn output.
//
//   qkv (B, T, 3C) = q | k | v, each read in place as (B, T, H, D) through qkv's strides (no head-split copy);
//   out (B, T, C)  = softmax(q k^T / sqrt(D) + causal and key-padding masks) v, heads merged, ready for c_proj.
//
// Flash attention: each task takes a block of 64 query rows of one (batch, head) and walks the key blocks up to
// the diagonal with an online softmax (fp32 running max and sum per row), so no T x T matrix is ever formed; the
// working set (Q^T, a 64 x 64 score tile, O^T: 48 KiB at D = 64) stays in L1/L2. Tiles are kept transposed
// (query rows along the vector lanes): the score tile S^T[key][query] is built by broadcasting key elements
// against Q^T, so the softmax statistics of a row are plain lane-wise maxima and sums, and P V accumulates into
// O^T by broadcasting value elements.
//
// Two engines compute the two products of a tile (the softmax between them is common fp32 code):
//   - the fp32 engine (flash_kernel.h): fp32 FMA micro-kernels, 6 keys (or dims) x 64 queries per step; compiled
//     for AVX-512 and portable vectors here, for AVX2 + FMA (8 lanes, 2 x 32 per step) in
//     flash_attention_avx2.cpp, picked at run time; bf16/fp16 keys and values are converted to
//     fp32 once per call;
//   - the AMX engine (flash_amx.h): bf16 input with D % 32 == 0 on CPUs with AMX-BF16 (e.g. GPT-1 in bf16).
//
// Limits: fp32, bf16, fp16; head size D <= 128 (any D); any T. key_padding_mask (B, T) bool, true = attend; a
// query row with no key to attend gives zeros. qkv must have stride 1 in its last dim, other strides are free.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "checks.h"
#include "cpu/attention_math.h"
#include "cpu/flash_amx.h"
#include "cpu/flash_kernel.h"
#include "cpu/flash_tiles.h"

namespace gpt_fast {
namespace {
using namespace attention;
using namespace flash;

#ifdef GPT_FAST_HAVE_AMX_ENGINE
GPT_FAST_TARGET_AMX void run_tasks_amx(const Params& p, int64_t begin, int64_t end) {
  amx_load_tile_config();
  run_tasks_with<AmxEngine, c10::BFloat16>(p, begin, end);
  _tile_release();
}
#endif

// The fp32 engine's tasks for attention::run_tasks_best (AVX-512, AVX2 in flash_attention_avx2.cpp, portable).
template <typename T>
struct Fp32Tasks {
  static GPT_FAST_INLINE void run(const Params& p, int64_t begin, int64_t end) { run_tasks<T>(p, begin, end); }
#if GPT_FAST_HAVE_X86
  static void run_avx2(const Params& p, int64_t begin, int64_t end) { flash::run_tasks_avx2<T>(p, begin, end); }
#endif
};

at::Tensor flash_attention_cpu(const at::Tensor& qkv, const std::optional<at::Tensor>& key_padding_mask,
                               int64_t n_head) {
  constexpr const char* op = "gpt_fast::flash_attention";
  const int64_t D = check_packed_qkv(qkv, n_head, op);
  check_last_dim_contiguous(qkv, op, "qkv");
  const int64_t B = qkv.size(0), T = qkv.size(1), C = checked_mul(n_head, D, op, "n_head * head_dim");
  TORCH_CHECK(D >= 1 && D <= kMaxHead, op, ": head size C / n_head = ", D, " must be in [1, ", kMaxHead, "]");
  const at::Tensor mask = check_key_padding_mask(key_padding_mask, qkv, B, T, op);  // (B, T) or undefined
  auto out = qkv.new_empty({B, T, C});
  if (out.numel() == 0) return out;

  const int64_t tasks = (T + kBlockQ - 1) / kBlockQ * B * n_head;
  const float scale = kLog2e / std::sqrt(static_cast<float>(D));
  const bool* mask_ptr = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  const cpu::Isa isa = cpu::cpu_isa();
#ifdef GPT_FAST_HAVE_AMX_ENGINE
  if (qkv.scalar_type() == at::kBFloat16 && D % 32 == 0 && isa >= cpu::Isa::kAmx) {
    const auto* base = static_cast<const c10::BFloat16*>(qkv.const_data_ptr());  // q and k read in place
    const int64_t vt_len = (T + kBlockK - 1) / kBlockK * kBlockK;
    auto vt = qkv.new_empty({B * n_head, D, vt_len});  // V^T per (batch, head), zero-padded
    build_vt(base + 2 * C, qkv.stride(0), qkv.stride(1), B, T, n_head, D, vt.mutable_data_ptr<c10::BFloat16>(),
             vt_len);
    Params p{B, T, n_head, D, base, qkv.stride(0), qkv.stride(1), base + C, base + 2 * C, qkv.stride(0),
             qkv.stride(1), vt.const_data_ptr<c10::BFloat16>(), vt_len, mask_ptr, out.mutable_data_ptr(), scale};
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) { run_tasks_amx(p, begin, end); });
    return out;
  }
#endif
  // Keys and values in fp32: in place for fp32 input, else one conversion of the (B, T, 2C) k | v part.
  at::Tensor kv = qkv.scalar_type() == at::kFloat ? qkv.narrow(2, C, 2 * C)
                                                  : qkv.narrow(2, C, 2 * C).to(at::kFloat);  // (B, T, 2C)
  Params p{B, T, n_head, D, qkv.const_data_ptr(), qkv.stride(0), qkv.stride(1), kv.const_data_ptr<float>(),
           kv.const_data_ptr<float>() + C, kv.stride(0), kv.stride(1), nullptr, 0, mask_ptr, out.mutable_data_ptr(),
           scale};
  with_storage_type(qkv.scalar_type(), [&](auto type) {
    using Elem = decltype(type);
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      run_tasks_best<Fp32Tasks<Elem>>(isa, p, begin, end);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("flash_attention", &flash_attention_cpu); }

}  // namespace gpt_fast
