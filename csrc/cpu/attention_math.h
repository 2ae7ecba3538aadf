// Shared tile math of the CPU attention kernels (flash_kernel.h, decode_kernel.h).
//
// Everything is computed in fp32 on vectors of kLanes floats written with GCC/Clang vector extensions, so one
// source compiles for every target. The lane count is GPT_FAST_ATTENTION_LANES (16 unless a translation unit
// defines it before including this header), and everything here lives in an inline namespace named after it
// (GPT_FAST_ATTENTION_NS), so the 16-lane and the 8-lane builds of the same inline code can sit in one binary:
//   16 lanes (flash_attention.cpp, decode_attention.cpp): the AVX-512 copy (one zmm per vector) and the portable
//     copy (x86-64 baseline, or any other CPU, where the compiler lowers the vectors to what it has);
//   8 lanes (flash_attention_avx2.cpp, decode_attention_avx2.cpp): the AVX2 + FMA copy, one ymm per vector.
//     (GCC has no register mode for a 64-byte vector without AVX-512: in an AVX2 function such vectors live on
//     the stack and every operation goes through memory, which made the 16-lane AVX2 copy slower than the
//     portable one: prefill attention at 5 GFLOP/s.)
// The helpers below are always inlined into the kernels' entry points, so they are compiled once per target.
//
// Scores are kept in base 2: the kernels fold log2(e) into the query scale and use exp2, so that
// softmax(s) = exp2(s * log2e - max) / sum(...).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors by value: only in always-inlined helpers

#include "cpu/cpu_isa.h"

#if GPT_FAST_HAVE_X86
#define GPT_FAST_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,prefer-vector-width=512")))
#define GPT_FAST_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define GPT_FAST_TARGET_AVX512
#define GPT_FAST_TARGET_AVX2
#endif
#define GPT_FAST_INLINE inline __attribute__((always_inline))

#ifndef GPT_FAST_ATTENTION_LANES
#define GPT_FAST_ATTENTION_LANES 16
#endif
#if GPT_FAST_ATTENTION_LANES == 16
#define GPT_FAST_ATTENTION_NS lanes16
#elif GPT_FAST_ATTENTION_LANES == 8
#define GPT_FAST_ATTENTION_NS lanes8
#else
#error "GPT_FAST_ATTENTION_LANES must be 16 or 8"
#endif

namespace gpt_fast::attention {
inline namespace GPT_FAST_ATTENTION_NS {

// Calls f(T{}) with T the storage type of dtype (fp32, bf16 or fp16; checked by the caller).
template <typename F>
void with_storage_type(c10::ScalarType dtype, F&& f) {
  if (dtype == c10::kBFloat16) f(c10::BFloat16{});
  else if (dtype == c10::kHalf) f(c10::Half{});
  else f(float{});
}

constexpr int kLanes = GPT_FAST_ATTENTION_LANES;
typedef float VF __attribute__((vector_size(4 * GPT_FAST_ATTENTION_LANES)));       // kLanes x fp32
typedef int32_t VI __attribute__((vector_size(4 * GPT_FAST_ATTENTION_LANES)));     // kLanes x int32
typedef uint16_t VU16 __attribute__((vector_size(2 * GPT_FAST_ATTENTION_LANES)));  // kLanes x bf16 / fp16 bits
typedef uint32_t VU32 __attribute__((vector_size(4 * GPT_FAST_ATTENTION_LANES)));

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

GPT_FAST_INLINE VF splat(float x) { return VF{} + x; }

GPT_FAST_INLINE VF load(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

GPT_FAST_INLINE void store(float* p, VF v) { std::memcpy(p, &v, sizeof(v)); }

GPT_FAST_INLINE VF vmax(VF a, VF b) { return a > b ? a : b; }

// kLanes consecutive values of storage type T, as fp32.
template <typename T>
GPT_FAST_INLINE VF load_float(const T* p);

template <>
GPT_FAST_INLINE VF load_float<float>(const float* p) { return load(p); }

template <>
GPT_FAST_INLINE VF load_float<c10::BFloat16>(const c10::BFloat16* p) {
  VU16 bits;
  std::memcpy(&bits, p, sizeof(bits));
  return (VF)(__builtin_convertvector(bits, VU32) << 16);  // bf16 is the top half of an fp32
}

// _Float16 in C++: GCC 12 has it on x86-64 only (aarch64 from GCC 13); elsewhere kLanes scalar conversions.
#if defined(__FLT16_MAX__) && (defined(__x86_64__) || defined(__clang__) || __GNUC__ >= 13)
typedef _Float16 VH __attribute__((vector_size(2 * GPT_FAST_ATTENTION_LANES)));
template <>
GPT_FAST_INLINE VF load_float<c10::Half>(const c10::Half* p) {
  VH h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, VF);
}
#else
template <>
GPT_FAST_INLINE VF load_float<c10::Half>(const c10::Half* p) {
  float tmp[kLanes];
  for (int i = 0; i < kLanes; ++i) tmp[i] = static_cast<float>(p[i]);
  return load(tmp);
}
#endif

// 2 kLanes consecutive values of storage type T as two fp32 vectors, in an order private to T ("pair order"):
// fp32 and fp16 give the first and the second kLanes values; bf16 gives the even and the odd values, which costs
// one shift and one mask instead of a widening conversion. Dot products and sums over a row do not care about the
// order, as long as both operands are loaded alike; unpair() restores the natural order.
template <typename T>
GPT_FAST_INLINE void load_pair(const T* p, VF& a, VF& b) {
  a = load_float(p);
  b = load_float(p + kLanes);
}

template <>
GPT_FAST_INLINE void load_pair<c10::BFloat16>(const c10::BFloat16* p, VF& a, VF& b) {
  VU32 words;
  std::memcpy(&words, p, sizeof(words));
  a = (VF)(words << 16);
  b = (VF)(words & 0xFFFF0000u);
}

// Writes the 32 values held in pair order by (a, b) to dst in natural order.
template <typename T>
GPT_FAST_INLINE void unpair(VF a, VF b, float* dst) {
  store(dst, a);
  store(dst + kLanes, b);
}

template <>
GPT_FAST_INLINE void unpair<c10::BFloat16>(VF a, VF b, float* dst) {
#if GPT_FAST_ATTENTION_LANES == 16
  store(dst, __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
  store(dst + kLanes, __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31));
#else
  store(dst, __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11));
  store(dst + kLanes, __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15));
#endif
}

// Stores kLanes fp32 values as storage type T (round to nearest even; bf16 as vec.h's fp32_to_bf16_bits does it).
template <typename T>
GPT_FAST_INLINE void store_as(T* p, VF v) {
  for (int i = 0; i < kLanes; ++i) p[i] = static_cast<T>(v[i]);
}

template <>
GPT_FAST_INLINE void store_as<float>(float* p, VF v) { store(p, v); }

template <>
GPT_FAST_INLINE void store_as<c10::BFloat16>(c10::BFloat16* p, VF v) {
  const VU32 u = (VU32)v;
  const VU32 nan = (VU32)(v != v);  // all ones where v is NaN
  const VU32 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const VU16 bits = __builtin_convertvector((rounded & ~nan) | (nan & 0x7FC0u), VU16);
  std::memcpy(p, &bits, sizeof(bits));
}

// Converts n fp32 values to storage type T (vectorised body, scalar tail).
template <typename T>
GPT_FAST_INLINE void float_to_row(const float* src, T* dst, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store_as(dst + i, load(src + i));
  for (; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// 2^x for x <= 0 (any x, including -inf, which gives exactly 0; so does x < -126; NaN gives NaN, so that a NaN
// score reaches the softmax sum as it does in PyTorch's math).
// x = n + f with n an integer and |f| <= 1/2; 2^f = e^(f ln2) by a degree-7 Taylor polynomial
// (relative error < 1e-8 on that interval), 2^n by building the exponent bits.
GPT_FAST_INLINE VF exp2_nonpositive(VF x) {
  const VF clamped = vmax(x, splat(-126.f));
  const VF rounder = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const VF n = (clamped + rounder) - rounder;
  const VF y = (clamped - n) * 0.6931471805599453f;
  VF p = splat(1.f / 5040.f);
  p = p * y + 1.f / 720.f;
  p = p * y + 1.f / 120.f;
  p = p * y + 1.f / 24.f;
  p = p * y + 1.f / 6.f;
  p = p * y + 0.5f;
  p = p * y + 1.f;
  p = p * y + 1.f;
  const VI exponent = (__builtin_convertvector(n, VI) + 127) << 23;
  const VF result = p * (VF)exponent;
  return x < -126.f ? VF{} : result + (x - x);  // x - x: 0, or NaN where x is NaN (the clamp above drops it)
}

GPT_FAST_INLINE float reduce_add(VF v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

GPT_FAST_INLINE float reduce_max(VF v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// {reduce_add(v[0]), ..., reduce_add(v[kLanes - 1])}: kLanes horizontal sums as one vector, by a tree of
// half-swaps.
#if GPT_FAST_ATTENTION_LANES == 16
GPT_FAST_INLINE VF reduce_add_lanes(const VF* v) {
  VF a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)  // lanes: 8 partial sums of v[2i], then 8 of v[2i+1]
    a[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)  // 4 partial sums each of v[4i .. 4i+3]
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)  // 2 partial sums each of v[8i .. 8i+7]
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
#else
GPT_FAST_INLINE VF reduce_add_lanes(const VF* v) {
  VF a[4], b[2];
  for (int i = 0; i < 4; ++i)  // lanes: 4 partial sums of v[2i], then 4 of v[2i+1]
    a[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int i = 0; i < 2; ++i)  // 2 partial sums each of v[4i .. 4i+3]
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(b[0], b[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(b[0], b[1], 1, 3, 5, 7, 9, 11, 13, 15);
}
#endif

// The tasks [begin, end) of an attention kernel, compiled for the best of AVX-512 (16 lanes), AVX2 + FMA (8 lanes)
// and portable code (16 lanes) that isa allows. Kernel is a struct of two static functions of (params, begin, end):
//   run:      the tasks, always inlined, so that the two wrappers below compile it for their targets;
//   run_avx2: the tasks of the kernel's 8-lane translation unit (x86 only).
template <typename Kernel, typename Params>
GPT_FAST_TARGET_AVX512 void run_tasks_avx512(const Params& p, int64_t begin, int64_t end) {
  Kernel::run(p, begin, end);
}

template <typename Kernel, typename Params>
void run_tasks_portable(const Params& p, int64_t begin, int64_t end) {
  Kernel::run(p, begin, end);
}

template <typename Kernel, typename Params>
void run_tasks_best(cpu::Isa isa, const Params& p, int64_t begin, int64_t end) {
  if (isa >= cpu::Isa::kAvx512) return run_tasks_avx512<Kernel>(p, begin, end);
#if GPT_FAST_HAVE_X86
  if (isa >= cpu::Isa::kAvx2) return Kernel::run_avx2(p, begin, end);
#endif
  run_tasks_portable<Kernel>(p, begin, end);
}

}  // inline namespace GPT_FAST_ATTENTION_NS
}  // namespace gpt_fast::attention
