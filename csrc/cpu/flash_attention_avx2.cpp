// The AVX2 + FMA build of the CPU flash attention kernel's fp32 engine (flash_kernel.h) with 8-lane vectors:
// one ymm register per vector, micro-kernel tiles sized for 16 registers. flash_attention.cpp calls it when
// cpu_isa() is avx2 (see attention_math.h for why the 16-lane code cannot serve AVX2).
#define GPT_FAST_ATTENTION_LANES 8

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/flash_kernel.h"

namespace gpt_fast::flash {

#if GPT_FAST_HAVE_X86
template <typename T>
GPT_FAST_TARGET_AVX2 void run_tasks_avx2(const Params& p, int64_t begin, int64_t end) {
  run_tasks<T>(p, begin, end);
}

template void run_tasks_avx2<float>(const Params&, int64_t, int64_t);
template void run_tasks_avx2<c10::BFloat16>(const Params&, int64_t, int64_t);
template void run_tasks_avx2<c10::Half>(const Params&, int64_t, int64_t);
#endif

}  // namespace gpt_fast::flash
