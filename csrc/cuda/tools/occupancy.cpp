// Occupancy of the gpt_fast kernels on A100 and H100 without a GPU: NVIDIA's header-only occupancy calculator
// (cuda_occupancy.h) with those GPUs' limits typed in. Reads lines "kernel registers static_smem_bytes threads"
// on stdin (from ptxas -v) and prints per line and GPU: "kernel gpu blocks_per_sm warps_per_sm occupancy limiter".
#include <cuda_occupancy.h>

#include <cstdio>
#include <iostream>
#include <string>

namespace {

struct Gpu {
  const char* name;
  int major, minor, sms;
  size_t smem_per_sm, smem_optin;
};

// Public specifications: A100 (SXM/PCIe, sm_80) and H100 SXM (sm_90).
constexpr Gpu kGpus[] = {{"A100", 8, 0, 108, 167936, 166912}, {"H100", 9, 0, 132, 233472, 232448}};

cudaOccDeviceProp props(const Gpu& g) {
  cudaOccDeviceProp p;
  p.computeMajor = g.major;
  p.computeMinor = g.minor;
  p.maxThreadsPerBlock = 1024;
  p.maxThreadsPerMultiprocessor = 2048;
  p.regsPerBlock = 65536;
  p.regsPerMultiprocessor = 65536;
  p.warpSize = 32;
  p.sharedMemPerBlock = 49152;
  p.sharedMemPerMultiprocessor = g.smem_per_sm;
  p.numSms = g.sms;
  p.sharedMemPerBlockOptin = g.smem_optin;
  p.reservedSharedMemPerBlock = 1024;
  return p;
}

std::string limiter(unsigned factors) {
  std::string s;
  auto add = [&](unsigned bit, const char* name) {
    if (factors & bit) s += (s.empty() ? "" : "+") + std::string(name);
  };
  add(OCC_LIMIT_WARPS, "warps");
  add(OCC_LIMIT_REGISTERS, "registers");
  add(OCC_LIMIT_SHARED_MEMORY, "shared");
  add(OCC_LIMIT_BLOCKS, "blocks");
  add(OCC_LIMIT_BARRIERS, "barriers");
  return s.empty() ? "-" : s;
}

}  // namespace

int main() {
  std::string kernel;
  int regs = 0, threads = 0;
  size_t smem = 0;
  while (std::cin >> kernel >> regs >> smem >> threads) {
    for (const Gpu& g : kGpus) {
      const cudaOccDeviceProp p = props(g);
      cudaOccFuncAttributes attr;
      attr.maxThreadsPerBlock = threads;
      attr.numRegs = regs;
      attr.sharedSizeBytes = smem;
      attr.partitionedGCConfig = PARTITIONED_GC_OFF;
      attr.shmemLimitConfig = FUNC_SHMEM_LIMIT_DEFAULT;
      attr.maxDynamicSharedSizeBytes = 0;
      attr.numBlockBarriers = 1;
      cudaOccDeviceState state;
      cudaOccResult r;
      if (cudaOccMaxActiveBlocksPerMultiprocessor(&r, &p, &attr, &state, threads, 0) != CUDA_OCC_SUCCESS) {
        std::fprintf(stderr, "occupancy calculation failed for %s\n", kernel.c_str());
        return 1;
      }
      const int warps = r.activeBlocksPerMultiprocessor * ((threads + 31) / 32);
      std::printf("%s %s %d %d %.3f %s\n", kernel.c_str(), g.name, r.activeBlocksPerMultiprocessor, warps,
                  warps / 64.0, limiter(r.limitingFactors).c_str());
    }
  }
  return 0;
}
