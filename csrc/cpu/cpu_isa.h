// The one run-time choice of instruction set for every CPU kernel (linear family, add_layernorm, bias_gelu,
// flash and decode attention).
//
// Levels, in increasing order; each includes the ones below it:
//   scalar       portable code only (no x86 intrinsics); "portable" is accepted as another name for it
//   avx2         AVX2 + FMA + F16C
//   avx512       AVX-512 F/BW/VL/DQ (+ FMA, F16C)
//   avx512_bf16  AVX-512 with the BF16 dot product (vdpbf16ps)
//   amx          AMX-TILE + AMX-BF16, with Linux's permission for the tile state (arch_prctl)
// cpu_isa() is the highest level the CPU has, capped by the environment variable
// GPT_FAST_CPU_ISA=scalar|portable|avx2|avx512|avx512_bf16|amx when it is set (any other value is an error).
// It is read on every call, so tests can compare the paths in one process; kernels read it once per op call.
// A kernel without a path for some level takes its best path below it (e.g. one with no AVX2 path runs its scalar
// loops under avx2).
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

// GPT_FAST_PORTABLE_ONLY builds the scalar paths alone (a check that they compile without x86 intrinsics).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(GPT_FAST_PORTABLE_ONLY)
#define GPT_FAST_HAVE_X86 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define GPT_FAST_HAVE_X86 0
#endif

namespace gpt_fast::cpu {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

// Linux hands out AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA).
inline bool request_amx_permission() {
#if GPT_FAST_HAVE_X86 && defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// The highest level this CPU (and OS) supports; detected once.
inline Isa detected_isa() {
#if GPT_FAST_HAVE_X86
  static const Isa isa = [] {
    __builtin_cpu_init();
    // __builtin_cpu_supports takes string literals only, hence no loop.
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
      return Isa::kScalar;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
      return Isa::kAvx2;
    if (!__builtin_cpu_supports("avx512bf16")) return Isa::kAvx512;
    const bool amx = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16");
    return amx && request_amx_permission() ? Isa::kAmx : Isa::kAvx512Bf16;
  }();
  return isa;
#else
  return Isa::kScalar;
#endif
}

// The level named by GPT_FAST_CPU_ISA (kAmx, i.e. no cap, when unset or empty).
inline Isa isa_cap() {
  const char* env = std::getenv("GPT_FAST_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return Isa::kAmx;
  struct Name {
    const char* name;
    Isa isa;
  };
  constexpr Name kNames[] = {{"scalar", Isa::kScalar}, {"portable", Isa::kScalar}, {"avx2", Isa::kAvx2},
                             {"avx512", Isa::kAvx512}, {"avx512_bf16", Isa::kAvx512Bf16}, {"amx", Isa::kAmx}};
  for (const Name& n : kNames)
    if (std::strcmp(env, n.name) == 0) return n.isa;
  TORCH_CHECK(false, "GPT_FAST_CPU_ISA must be scalar (or portable), avx2, avx512, avx512_bf16 or amx, got '", env,
              "'");
}

// The level the kernels use: what the CPU has, capped by GPT_FAST_CPU_ISA.
inline Isa cpu_isa() { return std::min(isa_cap(), detected_isa()); }

inline bool use_avx2() { return cpu_isa() >= Isa::kAvx2; }
inline bool use_avx512() { return cpu_isa() >= Isa::kAvx512; }
inline bool use_avx512_bf16() { return cpu_isa() >= Isa::kAvx512Bf16; }
inline bool use_amx() { return cpu_isa() >= Isa::kAmx; }

// The family of an AMD CPU with AVX-512 (base + extended family: 0x19 Zen 4, as Zen 3 but that has no AVX-512;
// 0x1A Zen 5), else 0. Detected once.
inline unsigned amd_avx512_family() {
#if GPT_FAST_HAVE_X86
  static const unsigned family = [] {
    __builtin_cpu_init();
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__builtin_cpu_is("amd") || !__builtin_cpu_supports("avx512f") || !__get_cpuid(1, &eax, &ebx, &ecx, &edx))
      return 0u;
    return ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF);
  }();
  return family;
#else
  return 0;
#endif
}

// Whether this is an AMD Zen 4 CPU, where the AVX-512 decode tiles leave their weight streams at few rows to the
// hardware prefetchers and read 2 streams side by side rather than prefetching 4 in software (linear_small_m.cpp,
// linear_quantized.h; measured there). Zen 5 measured no better with any of the Zen 4 rules (docs/figures.md).
inline bool amd_zen4() { return amd_avx512_family() == 0x19; }
// Whether this is an AMD Zen 5 CPU, where the quantized tiles prefetch further ahead at 1-2 rows (linear_quantized.h).
inline bool amd_zen5() { return amd_avx512_family() == 0x1A; }

// Asks for the cache line at p: into L1 (prefetcht0 on x86), or into L2 only with to_l2 (prefetcht1), the level
// the Zen 4 rules pick (linear_small_m.h, linear_quantized.h). decode_kernel.h keeps its own two loops: through this
// helper GCC 12 emitted none of its prefetches (every decode attention TU lost them, 1.6x slower at 8 x 128 keys).
inline void prefetch_line(const void* p, bool to_l2) {
  if (to_l2) {
    __builtin_prefetch(p, 0, 2);
  } else {
    __builtin_prefetch(p, 0, 3);
  }
}

}  // namespace gpt_fast::cpu
