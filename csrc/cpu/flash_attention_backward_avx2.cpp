// The AVX2 + FMA build of the CPU flash attention backward (flash_backward_kernel.h) with 8-lane vectors: one ymm
// register per vector, GEMM micro-kernel tiles of 3 rows x 4 vectors for 16 registers. flash_attention_backward.cpp
// calls it when cpu_isa() is avx2.
#define GPT_FAST_ATTENTION_LANES 8

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/flash_backward_kernel.h"

namespace gpt_fast::flash_bwd {

#if GPT_FAST_HAVE_X86
template <typename T>
GPT_FAST_TARGET_AVX2 void run_backward_tasks_avx2(const Params& p, int64_t begin, int64_t end) {
  run_backward_tasks<T>(p, begin, end);
}

template <typename T>
GPT_FAST_TARGET_AVX2 void run_delta_tasks_avx2(const Params& p, int64_t begin, int64_t end) {
  run_delta_tasks<T>(p, begin, end);
}

template void run_backward_tasks_avx2<float>(const Params&, int64_t, int64_t);
template void run_backward_tasks_avx2<c10::BFloat16>(const Params&, int64_t, int64_t);
template void run_backward_tasks_avx2<c10::Half>(const Params&, int64_t, int64_t);
template void run_delta_tasks_avx2<float>(const Params&, int64_t, int64_t);
template void run_delta_tasks_avx2<c10::BFloat16>(const Params&, int64_t, int64_t);
template void run_delta_tasks_avx2<c10::Half>(const Params&, int64_t, int64_t);
#endif

}  // namespace gpt_fast::flash_bwd
