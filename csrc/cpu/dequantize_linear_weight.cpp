// CPU kernel for gpt_fast::dequantize_linear_weight: the (N, K) weight that a weight-only quantized linear layer
// stands for, in the model's dtype, made for one call of the layer's "dequantize" engine (prefills longer than the
// decode kernels serve: gpt_fast/quantization/layer.py), which then runs the GEMM on it. From the logical format of
// gpt_fast/ops/reference.py (checked by check_quantized_weight, pack_quantized_weight.cpp):
//   bits 8: W[n, k] = q[n, k] * scale[n]                             q int8 (N, K), scale fp32 (N, 1)
//   bits 4: W[n, k] = q[n, k] * scale[n, g] + zero[n, g], g = k / G   q 4-bit (N, K / 2) low nibble first, bf16
// in fp32, then rounded to dtype (nearest even): reference.dequantize_linear_weight(...).to(dtype) bit for bit. (An
// FMA for q * scale + zero rounds once where the reference rounds twice, but the product of a 4-bit q and a bf16
// scale is exact in fp32, so the compiler may fuse them: the sum is the same.)
// One pass over the weight, where the PyTorch form takes five to seven; parallel over rows (at::parallel_for).
// Tiers: AVX2 + F16C (8 k per step, fp32 / bf16 / fp16 out), else the portable loop (and float64 out).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "checks.h"
#include "cpu/pack_quantized_weight.h"  // check_quantized_weight
#include "cpu/vec_avx2.h"               // GPT_FAST_HAVE_X86, GPT_FAST_AVX2, Vec8, store_part

namespace gpt_fast {
namespace {

template <typename T>
struct DequantArgs {
  const uint8_t* q;              // bits 8: (N, K) int8 bytes; bits 4: (N, K / 2) nibble pairs
  const float* scale8;           // bits 8: (N,)
  const c10::BFloat16* scale4;   // bits 4: (N, K / G)
  const c10::BFloat16* zero4;    // bits 4: (N, K / G)
  T* out;                        // (N, K)
  int64_t K, G;
  int bits;
};

// Rows [n0, n1), one element at a time.
template <typename T>
void dequantize_rows_scalar(const DequantArgs<T>& a, int64_t n0, int64_t n1) {
  const int64_t K = a.K;
  for (int64_t n = n0; n < n1; ++n) {
    T* dst = a.out + n * K;
    if (a.bits == 8) {
      const auto* q = reinterpret_cast<const int8_t*>(a.q) + n * K;
      const float s = a.scale8[n];
      for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<T>(static_cast<float>(q[k]) * s);
      continue;
    }
    const uint8_t* q = a.q + n * (K / 2);
    const int64_t G = a.G, groups = K / G;
    for (int64_t g = 0; g < groups; ++g) {
      const float s = static_cast<float>(a.scale4[n * groups + g]), z = static_cast<float>(a.zero4[n * groups + g]);
      for (int64_t k = g * G; k < (g + 1) * G; k += 2) {  // G is even: whole bytes
        dst[k] = static_cast<T>(static_cast<float>(q[k / 2] & 0xF) * s + z);
        dst[k + 1] = static_cast<T>(static_cast<float>(q[k / 2] >> 4) * s + z);
      }
    }
  }
}

#if GPT_FAST_HAVE_X86
// The 8 int8 weights at p as fp32 lanes.
GPT_FAST_AVX2 inline __m256 int8x8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// The 8 nibbles of 4 bytes (k, k + 1, ..., k + 7: byte i holds k + 2i low, k + 2i + 1 high) as fp32 lanes.
GPT_FAST_AVX2 inline __m256 nibbles8(const uint8_t* p) {
  int32_t bytes;
  std::memcpy(&bytes, p, 4);
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(bytes), shifts), _mm256_set1_epi32(0xF));
  return _mm256_cvtepi32_ps(q);
}

// Rows [n0, n1), 8 k per step; int4 groups whose size is not a multiple of 8 end in a partial step.
template <typename T>
GPT_FAST_AVX2 void dequantize_rows_avx2(const DequantArgs<T>& a, int64_t n0, int64_t n1) {
  const int64_t K = a.K;
  for (int64_t n = n0; n < n1; ++n) {
    T* dst = a.out + n * K;
    if (a.bits == 8) {
      const uint8_t* q = a.q + n * K;
      const __m256 s = _mm256_set1_ps(a.scale8[n]);
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) cpu::Vec8<T>::store(dst + k, _mm256_mul_ps(int8x8(q + k), s));
      if (k < K) {
        uint8_t tail[8] = {};
        std::memcpy(tail, q + k, static_cast<size_t>(K - k));
        cpu::store_part(dst + k, _mm256_mul_ps(int8x8(tail), s), K - k);
      }
      continue;
    }
    const uint8_t* q = a.q + n * (K / 2);
    const int64_t G = a.G, groups = K / G;
    for (int64_t g = 0; g < groups; ++g) {
      const __m256 s = _mm256_set1_ps(static_cast<float>(a.scale4[n * groups + g]));
      const __m256 z = _mm256_set1_ps(static_cast<float>(a.zero4[n * groups + g]));
      const int64_t k1 = (g + 1) * G;
      int64_t k = g * G;  // even: G is
      for (; k + 8 <= k1; k += 8)
        cpu::Vec8<T>::store(dst + k, _mm256_add_ps(_mm256_mul_ps(nibbles8(q + k / 2), s), z));
      if (k < k1) {
        uint8_t tail[4] = {};
        std::memcpy(tail, q + k / 2, static_cast<size_t>((k1 - k) / 2));
        cpu::store_part(dst + k, _mm256_add_ps(_mm256_mul_ps(nibbles8(tail), s), z), k1 - k);
      }
    }
  }
}
#endif  // GPT_FAST_HAVE_X86

at::Tensor dequantize_linear_weight_cpu(const at::Tensor& qweight, const at::Tensor& scales,
                                        const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size,
                                        at::ScalarType dtype) {
  constexpr const char* op = "gpt_fast::dequantize_linear_weight";
  TORCH_CHECK_VALUE(qweight.device().is_cpu(), op, ": qweight must be on the CPU here, got ", qweight.device());
  const int64_t K = check_quantized_weight(qweight, scales, zeros, bits, group_size, op);
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kDouble, op,
                    ": dtype must be float32, bfloat16, float16 or float64, got ", dtype);
  const int64_t N = qweight.size(0);
  checked_mul(N, K, op, "the weight's size N * K");
  auto out = qweight.new_empty({N, K}, dtype);
  const at::Tensor q = qweight.contiguous(), s = scales.contiguous();
  const at::Tensor z = zeros ? zeros->contiguous() : at::Tensor();
  [[maybe_unused]] const bool avx2 = cpu::use_avx2();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dequantize_linear_weight_cpu", [&] {
    const DequantArgs<scalar_t> a{
        static_cast<const uint8_t*>(q.const_data_ptr()),
        bits == 8 ? s.const_data_ptr<float>() : nullptr,
        bits == 4 ? s.const_data_ptr<c10::BFloat16>() : nullptr,
        bits == 4 ? z.const_data_ptr<c10::BFloat16>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), K, bits == 4 ? group_size : 0, static_cast<int>(bits)};
    const int64_t grain = std::max<int64_t>(1, 65536 / K);  // >= ~64K weights per task
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
#if GPT_FAST_HAVE_X86
      if constexpr (!std::is_same_v<scalar_t, double>) {
        if (avx2) return dequantize_rows_avx2<scalar_t>(a, n0, n1);
      }
#endif
      dequantize_rows_scalar<scalar_t>(a, n0, n1);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("dequantize_linear_weight", &dequantize_linear_weight_cpu); }

}  // namespace gpt_fast
