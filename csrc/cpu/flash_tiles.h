// Tile sizes, kernel parameters and the per-thread working set of the CPU flash attention kernel
// (flash_kernel.h); shared by its engines (the fp32 one there, the AMX one in flash_amx.h). Params is the same
// for every lane count (it crosses from flash_attention.cpp into flash_attention_avx2.cpp); Tiles is not.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

#include "cpu/attention_math.h"

namespace gpt_fast::flash {
using namespace attention;

constexpr int kBlockQ = 64;                 // query rows per task
constexpr int kBlockK = 64;                 // keys per score tile
constexpr int kMaxHead = 128;
constexpr int kMicro = 6;                   // keys (QK^T) or head dims (PV) per micro-kernel step

struct Params {
  int64_t B, T, H, D;
  const void* q;           // element (b, t, h, d) at q + b*q_sb + t*q_st + h*D + d
  int64_t q_sb, q_st;
  const void* k;           // keys (Engine::Elem), same indexing with kv_sb, kv_st; values at v
  const void* v;
  int64_t kv_sb, kv_st;
  const c10::BFloat16* vt;  // AMX engine: V^T per (batch, head), (B*H, D, vt_len) zero-padded; else null
  int64_t vt_len;
  const bool* mask;        // (B, T) contiguous, or null
  void* out;               // (B, T, H*D) contiguous
  float scale;             // log2(e) / sqrt(D)
  // Training forward (flash_attention_train): the per-row log-sum-exp, and dropout on the probabilities.
  float* lse = nullptr;    // (B, H, T) fp32: log2 sum_j 2^(scaled score) (-inf: nothing to attend), or null
  uint64_t seed = 0;       // Philox key (csrc/philox.h); element ((b H + h) T + i) T + j of the probabilities
  uint32_t threshold = 0;  // philox::dropout_threshold(p); 0: no dropout
  float keep_scale = 1.f;  // 1 / (1 - p)
  cpu::Isa isa = cpu::Isa::kScalar;  // the tier that draws the dropout bits (cpu/dropout_mask.h)
};

#if GPT_FAST_HAVE_X86
// The fp32 engine's tasks [begin, end) compiled for AVX2 + FMA with 8 lanes (flash_attention_avx2.cpp), for
// T = float, c10::BFloat16, c10::Half.
template <typename T>
GPT_FAST_TARGET_AVX2 void run_tasks_avx2(const Params& p, int64_t begin, int64_t end);
#endif

inline namespace GPT_FAST_ATTENTION_NS {  // the working set holds VFs: one type per lane count

constexpr int kVecQ = kBlockQ / kLanes;  // vectors per query block

struct Tiles {  // per-thread working set
  alignas(64) float qt[kMaxHead][kBlockQ];  // Q^T, scaled (the AMX engine keeps bf16 pairs here)
  alignas(64) float st[kBlockK][kBlockQ];   // S^T, then P^T
  alignas(64) float ot[kMaxHead][kBlockQ];  // O^T accumulator
  VF m[kVecQ], l[kVecQ];                    // running max (base 2) and sum per query row
  alignas(64) uint32_t p2[kBlockK / 2][kBlockQ];   // AMX engine: P^T as bf16 pairs of consecutive keys
  alignas(64) c10::BFloat16 kpad[16][kMaxHead];    // AMX engine: a partial block of keys, zero-padded
};

}  // inline namespace GPT_FAST_ATTENTION_NS
}  // namespace gpt_fast::flash
