// CPU kernel for gpt_fast::bias_gelu: out = gelu_tanh(x + bias), the GPT-1 MLP activation after the c_fc GEMM.
// One pass: each element is read once, summed with its bias and activated in fp32, written once in x's dtype.
// x: (..., N) in fp32, bf16 or fp16, any strides (a non-contiguous x is copied first); bias: (N,) same dtype.
// AVX-512 (16 lanes) or AVX2 + FMA (8 lanes) path, exp-based tanh (~1 ulp in fp32), when the CPU has it, else a
// portable scalar loop.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/vec.h"
#include "cpu/vec_avx2.h"

namespace gpt_fast {
namespace {

template <typename T>
void bias_gelu_scalar(const T* x, const T* bias, T* out, int64_t row_begin, int64_t row_end, int64_t N) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t c = 0; c < N; ++c) {
      const float v = static_cast<float>(x[r * N + c]) + static_cast<float>(bias[c]);
      out[r * N + c] = static_cast<T>(cpu::gelu_tanh_scalar(v));
    }
  }
}

#if GPT_FAST_HAVE_X86
template <typename T>
GPT_FAST_AVX512 void bias_gelu_avx512(const T* x, const T* bias, T* out, int64_t row_begin, int64_t row_end,
                                      int64_t N) {
  using V = cpu::Vec16<T>;
  const int64_t full = N - N % 16;
  const __mmask16 tail = cpu::first_lanes(N % 16);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* xr = x + r * N;
    T* o = out + r * N;
    for (int64_t c = 0; c < full; c += 16) {
      V::store(o + c, cpu::gelu_tanh_fp32(_mm512_add_ps(V::load(xr + c), V::load(bias + c))));
    }
    if (tail) {
      const __m512 v = _mm512_add_ps(V::load(xr + full, tail), V::load(bias + full, tail));
      V::store(o + full, cpu::gelu_tanh_fp32(v), tail);
    }
  }
}

// The AVX2 + FMA path: 8 lanes, two vectors per step (the exp polynomial is a long dependency chain), tails
// through load_part / store_part.
template <typename T>
GPT_FAST_AVX2 void bias_gelu_avx2(const T* x, const T* bias, T* out, int64_t row_begin, int64_t row_end, int64_t N) {
  using V = cpu::Vec8<T>;
  const int64_t full = N - N % 8, tail = N % 8;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* xr = x + r * N;
    T* o = out + r * N;
    int64_t c = 0;
    for (; c + 16 <= full; c += 16) {
      const __m256 a = _mm256_add_ps(V::load(xr + c), V::load(bias + c));
      const __m256 b = _mm256_add_ps(V::load(xr + c + 8), V::load(bias + c + 8));
      V::store(o + c, cpu::gelu_tanh_fp32_avx2(a));
      V::store(o + c + 8, cpu::gelu_tanh_fp32_avx2(b));
    }
    if (c < full) V::store(o + c, cpu::gelu_tanh_fp32_avx2(_mm256_add_ps(V::load(xr + c), V::load(bias + c))));
    if (tail) {
      const __m256 v = _mm256_add_ps(cpu::load_part(xr + full, tail), cpu::load_part(bias + full, tail));
      cpu::store_part(o + full, cpu::gelu_tanh_fp32_avx2(v), tail);
    }
  }
}
#endif

at::Tensor bias_gelu_cpu(const at::Tensor& x, const at::Tensor& bias) {
  constexpr const char* op = "gpt_fast::bias_gelu";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension, got a scalar");
  check_float_dtype(x, op, "x");
  const int64_t N = x.size(-1);
  check_vector(bias, N, x, op, "bias");

  auto xc = x.contiguous();
  auto bc = bias.contiguous();
  auto out = xc.new_empty(xc.sizes());
  if (xc.numel() == 0) return out;
  const int64_t rows = xc.numel() / N;
  const int64_t grain = std::max<int64_t>(1, 32768 / N);  // ~32K elements per task
  [[maybe_unused]] const cpu::Isa isa = cpu::cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_gelu_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* bp = bc.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
#if GPT_FAST_HAVE_X86
      if constexpr (!std::is_same_v<scalar_t, double>) {
        if (isa >= cpu::Isa::kAvx512) return bias_gelu_avx512<scalar_t>(xp, bp, op_, begin, end, N);
        if (isa >= cpu::Isa::kAvx2) return bias_gelu_avx2<scalar_t>(xp, bp, op_, begin, end, N);
      }
#endif
      bias_gelu_scalar<scalar_t>(xp, bp, op_, begin, end, N);
    });
  });
#ifdef GPT_FAST_SANITIZER_CANARY
  // A planted bug, compiled only into the canary build of .ci/sanitize: one element written past the end of the
  // output, which AddressSanitizer must report as a heap-buffer-overflow (proof that the job catches such bugs).
  char* past_end = static_cast<char*>(out.mutable_data_ptr()) + out.nbytes();
  for (size_t i = 0; i < out.itemsize(); ++i) past_end[i] = 0;
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("bias_gelu", &bias_gelu_cpu); }

}  // namespace gpt_fast
