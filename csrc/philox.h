// Philox4x32-10, the counter-based random number generator of Salmon, Moraes, Dror and Shaw, "Parallel random
// numbers: as easy as 1, 2, 3" (SC 2011), and the dropout mask gpt_fast's kernels draw from it. Torch-free; host
// and device code (CUDA sources include it too).
//
// A counter-based generator is a pure function of (counter, key): any thread can draw the bits of any element
// without a shared state, and a backward kernel regenerates the forward's mask from the same seed.
//
// The dropout contract (gpt_fast/ops/philox.py is the same in PyTorch, the tests' oracle):
//   - each op call gets a 64-bit `seed` (the Python wrapper draws it from torch's generator, so
//     torch.manual_seed makes a run reproducible); key = (low 32 bits of seed, high 32 bits);
//   - element n of the op's logical tensor (its row-major linear index; each op documents its tensor) takes
//     word n % 4 of the block with counter (low 32 bits of n / 4, high 32 bits, 0, 0);
//   - it is kept when that word >= dropout_threshold(p) = floor(p * 2^32), so P(keep) = 1 - p up to 2^-32,
//     and a kept value is scaled by 1 / (1 - p). p must lie in [0, 1).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define GPT_FAST_PHILOX_FN __host__ __device__ __forceinline__
#else
#define GPT_FAST_PHILOX_FN inline
#endif

namespace gpt_fast::philox {

constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;     // round multipliers
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;   // key schedule increments
constexpr int kRounds = 10;

struct Block {
  uint32_t w[4];
};

GPT_FAST_PHILOX_FN Block philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                       uint32_t k1) {
  for (int round = 0; round < kRounds; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;  // (hi0, lo0)
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;  // (hi1, lo1)
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
  }
  return Block{{c0, c1, c2, c3}};
}

// The 32 random bits of element n under seed (the contract above).
GPT_FAST_PHILOX_FN uint32_t element_bits(uint64_t seed, uint64_t n) {
  const uint64_t block = n >> 2;
  const Block b = philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u,
                                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return b.w[n & 3];
}

// floor(p * 2^32) for p in [0, 1): an element is kept when its bits are >= this.
GPT_FAST_PHILOX_FN uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(p * 4294967296.0); }

GPT_FAST_PHILOX_FN bool keep(uint64_t seed, uint64_t n, uint32_t threshold) {
  return element_bits(seed, n) >= threshold;
}

}  // namespace gpt_fast::philox
