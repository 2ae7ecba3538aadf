// CPU kernel for gpt_fast::linear_quantized: out = [gelu_tanh](x @ W.T + bias) [+ residual] for few rows (decode),
// W a weight-only int8 or int4 weight packed by pack_quantized_weight (csrc/cpu/quantized_layout.h).
//
// Weight-only: the weights are dequantized in registers and every product and sum is fp32 (no quantization of x),
// so the result is dequantize-then-matmul up to fp32 rounding and summation order:
//   bits 8: out[m, n] = scale[n] * sum_k q[n, k] x[m, k]                       (one scale per column, applied last)
//   bits 4: out[m, n] = sum_g (scale[n, g] * sum_{k in g} (q[n, k] - 8) x[m, k] + (zero[n, g] + 8 scale[n, g]) xsum[m, g])
// with xsum[m, g] = sum_{k in g} x[m, k] computed once per call (in double, rounded to fp32), in the vector tiers:
// one FMA per weight and row, the scale and zero once per group. The nibbles are centred (q - 8, zero + 8 scale):
// the plain form scale * sum q x + zero * sum x cancels (zero ~ -max|W|, q * scale up to 2 max|W|) and measured
// ~3.4x PyTorch's own fp32 error at K = 64 (tests/accuracy.py allows 3x); centred, both terms are ~|W|. The scalar
// path dequantizes each weight (q * scale + zero) before its product. With a bf16 x, an even K and AVX512_BF16 (int4:
// and VBMI, else its fp32 path; int8: 2+ rows, its fp32 path being faster at one), both widths multiply with
// vdpbf16ps instead (2 k per instruction, half the FMAs; exact: q (int8) or q - 8 and x are bf16 values, their
// products exact in fp32, sums in fp32): x is then passed as bf16 k pairs as well; int8 from 4 rows with K % 32 == 0
// on AMX runs tdpbf16ps tiles over the same exact bf16 weights (amx_linear.h; x pairs padded to 16 rows). The one
// exception to "no quantization of x": int8 with a bf16 x from 5 rows on AVX512_VNNI without AMX holds x as 16-bit
// integers per group of 32 k with a power-of-two scale (int8_tile_dpwssd.h: exact for every x within 2^7 of its
// group's largest, the others rounded at 2^-15 of it) and multiplies with vpdpwssd, because converting the weights
// to bf16 bounds int8_tile_dpbf16 there (Zen 5, GPT-1's decode linears at 8 rows, 2 threads: 1.13-1.23x faster;
// batch-8 decode 1.46-1.54x -> 1.57-1.60x bf16's tok/s, alternating processes; at 1-4 rows, memory-bound, it
// measured no faster than the fp32 and vdpbf16ps tiles, which keep them).
// x_bits 8: x is first rounded to int8 per group of G k (bits 4: the weights' groups; bits 8: group_size, x's
// alone), each with its own scale (round_activations.cpp, to the bits of reference.round_activations), and every
// tier computes on the rounded x as above; on AVX512_VNNI + VBMI the AVX-512 tier multiplies the int8 x and the
// 4-bit or 8-bit q as bytes instead (int4_tile_vnni.h, int8_tile_vnni.h), exact in int32 per group.
// This file: the binding (checks, the N check against the padding marker, the fp32 copy of x and its group sums),
// the portable scalar path and the dispatch over tiers: AMX (int8; amx_linear.h via linear_quantized_avx512.cpp),
// AVX-512 (linear_quantized_avx512.cpp), AVX2 + FMA (linear_quantized_avx2.cpp), else scalar.
// Parallel over 16-column blocks with at::parallel_for; x is read through its strides once, so any strides are
// accepted. Larger M works, re-reading each block once per row tile.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "checks.h"
#include "cpu/amx_linear.h"  // amx::kMinRows, amx::kK, amx::padded_rows
#include "cpu/int4_tile_vnni.h"  // kMaxVnniGroup
#include "cpu/int8_tile_dpwssd.h"  // kX16Group, round_x16_groups
#include "cpu/linear_quantized.h"
#include "cpu/pack_quantized_weight.h"
#include "cpu/round_activations.h"
#include "cpu/vec.h"

namespace gpt_fast {
namespace {

using namespace quantized;

// The 16 fp32 sums of row m, columns [n0, n0 + 16) clipped to N: bias, GELU, residual, store.
template <typename T>
void finish_row_scalar(const QuantArgs<T>& a, const float* total, int64_t m, int64_t n0) {
  const int64_t width = std::min(kBN, a.N - n0);
  for (int64_t j = 0; j < width; ++j) {
    float v = total[j];
    if (a.bias) v += static_cast<float>(a.bias[n0 + j]);
    if (a.gelu) v = cpu::gelu_tanh_scalar(v);
    if (a.residual) v += static_cast<float>(a.residual[m * a.ld_residual + n0 + j]);
    a.out[m * a.N + n0 + j] = static_cast<T>(v);
  }
}

template <typename T>
void quantized_blocks_scalar(const QuantArgs<T>& a, int64_t block_begin, int64_t block_end) {
  const int64_t K = a.K;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const uint8_t* wb = a.w + b * a.block_bytes;
    for (int64_t m = 0; m < a.M; ++m) {
      const float* xr = a.x + m * K;
      float total[kBN] = {};
      if (a.bits == 8) {
        const auto* q = reinterpret_cast<const int8_t*>(wb);  // (K, 16)
        for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
          float part[kBN] = {};
          for (int64_t k = k0; k < std::min(K, k0 + kChunkK); ++k)
            for (int64_t j = 0; j < kBN; ++j) part[j] += static_cast<float>(q[k * kBN + j]) * xr[k];
          for (int64_t j = 0; j < kBN; ++j) total[j] += part[j];
        }
        for (int64_t j = 0; j < kBN; ++j) total[j] *= load_f32(wb + K * kBN + 4 * j);
      } else {
        const int64_t G = a.G, groups = K / G;
        for (int64_t g = 0; g < groups; ++g) {
          const uint8_t* grp = wb + g * quant::group_bytes4(G);  // (G / 2, 16) nibble pairs, scales, zeros
          float scale[kBN], zero[kBN], part[kBN] = {};
          for (int64_t j = 0; j < kBN; ++j) scale[j] = load_bf16(grp + 8 * G + 2 * j);
          for (int64_t j = 0; j < kBN; ++j) zero[j] = load_bf16(grp + 8 * G + 2 * kBN + 2 * j);
          for (int64_t p = 0; p < G / 2; ++p) {
            if (p % (kChunkK / 2) == 0)  // two-level sum: fold every 64 k
              for (int64_t j = 0; j < kBN; ++j) total[j] += part[j], part[j] = 0.f;
            const float x0 = xr[g * G + 2 * p], x1 = xr[g * G + 2 * p + 1];
            for (int64_t j = 0; j < kBN; ++j) {
              const uint8_t byte = grp[p * kBN + j];
              part[j] += (static_cast<float>(byte & 0xF) * scale[j] + zero[j]) * x0 +
                         (static_cast<float>(byte >> 4) * scale[j] + zero[j]) * x1;
            }
          }
          for (int64_t j = 0; j < kBN; ++j) total[j] += part[j];
        }
      }
      finish_row_scalar(a, total, m, b * kBN);
    }
  }
}

// out_features N against the padding marker of the last block (quantized_layout.h): the columns past N must be the
// -0.0 marker and column N - 1 must not be, else N differs from the packed one. At most 16 reads.
void check_packed_columns(const at::Tensor& packed, int64_t N, int64_t K, int64_t bits, int64_t G, const char* op) {
  const int64_t NB = packed.size(0), real = N - kBN * (NB - 1);
  const uint8_t* last = packed.const_data_ptr<uint8_t>() + (NB - 1) * packed.size(1) * packed.size(2);
  const uint8_t* marks = bits == 8 ? last + K * kBN : last + 8 * G + 2 * kBN;  // int8 scales / int4 group-0 zeros
  const int64_t width = bits == 8 ? 4 : 2;
  auto is_marker = [&](int64_t j) {
    const uint8_t* p = marks + width * j;
    return bits == 8 ? load_f32(p) == 0.f && p[3] == 0x80 : p[0] == 0 && p[1] == 0x80;
  };
  for (int64_t j = real; j < kBN; ++j) {
    TORCH_CHECK_VALUE(is_marker(j), op, ": out_features = ", N, " is smaller than packed's: its column ",
                      N - real + j, " holds a weight, not the padding pack_quantized_weight writes past its N");
  }
  TORCH_CHECK_VALUE(!is_marker(real - 1), op, ": out_features = ", N, " is larger than packed's: its column ", N - 1,
                    " is the padding pack_quantized_weight writes past its N");
}

at::Tensor linear_quantized_cpu(const at::Tensor& x, const at::Tensor& packed, int64_t out_features, int64_t bits,
                                int64_t group_size, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& residual, bool gelu, int64_t x_bits) {
  constexpr const char* op = "gpt_fast::linear_quantized";
  const int64_t K = check_linear_quantized_args(x, packed, out_features, bits, group_size, x_bits, op);
  // G: the weights' group (bits 4, also x's with x_bits 8), or x's group alone (bits 8 with x_bits 8)
  const int64_t N = out_features, NB = packed.size(0), G = bits == 4 || x_bits == 8 ? group_size : 0;
  check_packed_columns(packed, N, K, bits, G, op);
  const std::vector<int64_t> out_shape = check_linear_quantized_epilogue(x, N, bias, residual, op);
  const int64_t M = x.numel() / K;
  auto out = x.new_empty(out_shape);
  if (M == 0) return out;
  checked_mul(M, K, op, "M * K");
  const at::Tensor x2 = x.reshape({M, K});
  at::Tensor res2, bias_c = bias ? bias->contiguous() : at::Tensor();
  if (residual) {
    res2 = residual->reshape({M, N});
    if (res2.stride(1) != 1) res2 = res2.contiguous();
  }
  std::unique_ptr<float[]> xf(new float[M * K]);  // (M, K) fp32 copy of x (not zeroed)
  std::vector<float> xsum;             // bits 4: (M, K / G) group sums (vector tiers)
  std::vector<uint32_t> x_pairs;       // dpbf16: (M, K / 2) bf16 pairs for vdpbf16ps
  std::vector<int8_t> xq;              // x_bits 8: (M, K) x rounded to int8
  std::vector<float> xscale;           //   and (M, K / G) the scales of its groups
  std::vector<int32_t> xqsum;          //   and (M, K / G) the sums of xq over them
  std::vector<int16_t> x16q;           // x16: (M, K) x as 16-bit integers
  std::vector<float> x16scale;         //   and (M, K / kX16Group) their scales
  [[maybe_unused]] const bool avx512 = cpu::use_avx512(), avx2 = cpu::use_avx2();
  const bool round_x = x_bits == 8;
  // int4 or int8 x int8 bytes (whole 4-k steps, integer sums that cannot overflow): VNNI on the AVX-512 tier
  // (int4_tile_vnni.h, int8_tile_vnni.h), vpmaddubsw on the AVX2 one (int4_tile_bytes, int8_tile_bytes); an
  // AVX-512 CPU without VNNI + VBMI takes the fp32 tile on the rounded x
  const bool byte_groups = round_x && G % 4 == 0 && G <= kMaxVnniGroup;
  const bool vnni = byte_groups && avx512 && has_avx512_vnni_vbmi(), bytes_avx2 = byte_groups && !avx512 && avx2;
  // int8 at one row keeps the fp32 FMAs (int8_tile, linear_quantized_avx512.cpp): faster there than vdpbf16ps
  const bool dpbf16 = !round_x && x.scalar_type() == at::kBFloat16 && K % 2 == 0 && cpu::use_avx512_bf16() &&
                      (bits == 8 ? M > 1 : has_avx512_vbmi());
  // int8 from 4 rows on AMX: tdpbf16ps tiles over the weights made bf16 (linear_quantized_avx512.cpp)
  const bool amx = dpbf16 && bits == 8 && M >= amx::kMinRows && K % amx::kK == 0 && cpu::use_amx();
  // int8 from kX16MinRows rows with a bf16 x on AVX512_VNNI: x as 16-bit integers (int8_tile_dpwssd.h), unless
  // AMX takes it or x holds an infinity or NaN (round_x16_groups then clears it)
  bool x16 = !round_x && !amx && bits == 8 && x.scalar_type() == at::kBFloat16 && K % kX16Group == 0 &&
             M >= kX16MinRows && avx512 && has_avx512_vnni_vbmi();
  const int64_t pair_rows = amx ? amx::padded_rows(M) : M;  // AMX: whole 16-row tiles
  checked_mul(pair_rows, K, op, "M (rounded up to 16 rows) * K");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "linear_quantized_cpu", [&] {
    const scalar_t* xp = x2.const_data_ptr<scalar_t>();
    small_m::rows_to_float(xp, M, K, x2.stride(0), x2.stride(1), xf.get());
    if (round_x) {
      xq.resize(M * K), xscale.resize(M * (K / G)), xqsum.resize(M * (K / G));
      round_activation_groups(xf.get(), xq.data(), xscale.data(), xqsum.data(), 0, M * (K / G), G);
    }
    if (bits == 4) {
      xsum.resize(M * (K / G));
      for (size_t i = 0; i < xsum.size(); ++i) {  // row m, group g: xf[m K + g G + k] = xf[i G + k]
        double part[4] = {};  // independent partial sums: not one chain of dependent adds
        int64_t k = 0;
        for (; k + 4 <= G; k += 4)
          for (int l = 0; l < 4; ++l) part[l] += xf[i * G + k + l];
        for (; k < G; ++k) part[0] += xf[i * G + k];
        xsum[i] = static_cast<float>((part[0] + part[1]) + (part[2] + part[3]));
      }
    }
#if GPT_FAST_HAVE_X86
    if (x16) {
      x16q.resize(M * K), x16scale.resize(M * (K / kX16Group));
      x16 = round_x16_groups(xf.get(), x16q.data(), x16scale.data(), M * (K / kX16Group));
    }
#endif
    if (dpbf16 && !x16) {  // xf holds bf16 values exactly: its high halves are x's own bits
      x_pairs.assign(pair_rows * K / 2, 0u);  // the padding rows (AMX) stay 0
      for (size_t i = 0; i < static_cast<size_t>(M * K / 2); ++i) {
        uint32_t lo, hi;
        std::memcpy(&lo, &xf[2 * i], 4), std::memcpy(&hi, &xf[2 * i + 1], 4);
        x_pairs[i] = lo >> 16 | (hi & 0xFFFF0000u);
      }
    }
    QuantArgs<scalar_t> a{xf.get(), bits == 4 ? xsum.data() : nullptr, dpbf16 && !x16 ? x_pairs.data() : nullptr,
                          vnni || bytes_avx2 ? xq.data() : nullptr, xscale.data(), xqsum.data(),
                          x16 ? x16q.data() : nullptr, x16scale.data(), packed.const_data_ptr<uint8_t>(),
                          bias ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                          residual ? res2.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
                          M, K, N, G, packed.size(1) * packed.size(2), residual ? res2.stride(0) : 0,
                          static_cast<int>(bits), gelu};
    const int64_t grain = std::max<int64_t>(1, 32768 / (K * kBN));  // >= ~32K weights per task
    at::parallel_for(0, NB, grain, [&](int64_t begin, int64_t end) {
#if GPT_FAST_HAVE_X86
      if constexpr (!std::is_same_v<scalar_t, double>) {
        if (amx) return quantized_blocks_amx<scalar_t>(a, begin, end);
        if (avx512) return quantized_blocks_avx512<scalar_t>(a, begin, end);
        if (avx2) return quantized_blocks_avx2<scalar_t>(a, begin, end);
      }
#endif
      quantized_blocks_scalar<scalar_t>(a, begin, end);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("linear_quantized", &linear_quantized_cpu); }

}  // namespace gpt_fast
