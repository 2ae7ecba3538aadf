// A small SIMT execution layer that runs CUDA kernel source on the CPU, for tests (g++ -std=c++20).
// Include it before any kernel header. Each CUDA thread of a block is a std::thread (the same threads run every
// block of a launch); blocks run one after the other; __shared__ variables are static storage (one block alive at a
// time); __syncthreads is a barrier (mutex + condition variable, which ThreadSanitizer sees) over the block, warp
// shuffles go through a per-warp buffer between two barrier phases, and a thread that returns drops out of both
// barriers. Kernel headers see GF_SIMT and compile their scalar fallbacks (mma.cuh) instead of inline PTX.
// Limits: 1-D blocks, full-warp masks only, no dynamic shared memory, no atomics; run it under ThreadSanitizer
// (races between barriers) and UBSan -fsanitize=bounds-strict (out-of-bounds shared arrays).
#pragma once
#define GF_SIMT 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#undef __shared__
#define __shared__ static
#undef __global__
#define __global__
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace gf_simt {

// A barrier over `count` threads whose waiters sleep on a condition variable. std::barrier's waiters spin with
// sched_yield, which under ThreadSanitizer (an instrumented atomic load per spin, 2 cores shared by up to 128
// threads) made the layer several times slower. A thread that leaves the barrier for good calls arrive_and_drop.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long long phase = phase_;
    if (arrive(lock)) return;
    done_.wait(lock, [&] { return phase_ != phase; });
  }
  void arrive_and_drop() {
    std::unique_lock<std::mutex> lock(mutex_);
    --count_;
    if (arrived_ > 0 && arrived_ == count_) complete(lock);
  }

 private:
  bool arrive(std::unique_lock<std::mutex>& lock) {  // true when this arrival completed the phase
    if (++arrived_ < count_) return false;
    complete(lock);
    return true;
  }
  void complete(std::unique_lock<std::mutex>& lock) {
    arrived_ = 0;
    ++phase_;
    lock.unlock();
    done_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable done_;
  int count_, arrived_ = 0;
  unsigned long long phase_ = 0;
};

struct Warp {
  explicit Warp(int lanes) : bar(lanes) {}
  Barrier bar;
  unsigned long long slot[32] = {};  // one shuffle payload (up to 8 bytes) per lane
  alignas(16) unsigned char wide[32][64] = {};  // one warp_gather payload (up to 64 bytes) per lane
};

inline dim3 grid_dim, block_dim;  // written before a launch's threads start, read-only while they run
inline thread_local uint3 thread_idx, block_idx;
inline thread_local Warp* warp = nullptr;
inline thread_local Barrier* block_barrier = nullptr;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "simt: %s\n", what);
  std::abort();
}

template <typename T>
T exchange(T value, int src_lane) {
  static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle payload up to 8 bytes");
  const int lane = thread_idx.x % 32;
  std::memcpy(&warp->slot[lane], &value, sizeof(T));
  warp->bar.arrive_and_wait();  // every lane has published
  T out;
  std::memcpy(&out, &warp->slot[src_lane & 31], sizeof(T));
  warp->bar.arrive_and_wait();  // every lane has read before the slots are reused
  return out;
}

// Every lane gets every lane's value (all[lane] = that lane's `mine`): the layer's stand-in for warp-wide
// register exchanges (the mma fallback) in two barrier phases instead of one shuffle per register.
template <typename T>
void warp_gather(const T& mine, T* all) {
  static_assert(sizeof(T) <= sizeof(Warp::wide[0]), "warp_gather payload up to 64 bytes");
  const int lane = thread_idx.x % 32;
  std::memcpy(warp->wide[lane], &mine, sizeof(T));
  warp->bar.arrive_and_wait();
  for (int l = 0; l < 32; ++l) std::memcpy(&all[l], warp->wide[l], sizeof(T));
  warp->bar.arrive_and_wait();
}

inline void check_mask(unsigned mask) {
  if (mask != 0xffffffffu) fail("only full-warp masks are emulated");
}

// Runs kernel(args...) for every block of the grid, one block at a time, one std::thread per CUDA thread. The
// threads are made once per launch and go through the blocks together (thread creation under ThreadSanitizer
// costs more than a small block's work): each block has its own barriers, since a thread that returns drops out of
// them for good, and `between` holds every thread until the whole block is done before the next one starts (the
// static __shared__ storage is reused).
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  if (block.y != 1 || block.z != 1) fail("only 1-D blocks are emulated");
  const int n = static_cast<int>(block.x);
  const size_t blocks = size_t{grid.x} * grid.y * grid.z;
  grid_dim = grid;
  block_dim = block;
  struct BlockBarriers {
    explicit BlockBarriers(int n) : bar(n) {
      for (int w = 0; w * 32 < n; ++w) warps.push_back(std::make_unique<Warp>(std::min(32, n - w * 32)));
    }
    Barrier bar;
    std::vector<std::unique_ptr<Warp>> warps;
  };
  std::vector<std::unique_ptr<BlockBarriers>> per_block;
  per_block.reserve(blocks);
  for (size_t b = 0; b < blocks; ++b) per_block.push_back(std::make_unique<BlockBarriers>(n));
  Barrier between(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int t = 0; t < n; ++t)
    threads.emplace_back([&, t] {
      size_t b = 0;
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx, ++b) {
            thread_idx = make_uint3(t, 0, 0);
            block_idx = make_uint3(bx, by, bz);
            warp = per_block[b]->warps[t / 32].get();
            block_barrier = &per_block[b]->bar;
            kernel(args...);
            block_barrier->arrive_and_drop();
            warp->bar.arrive_and_drop();
            between.arrive_and_wait();  // the block is done in every thread
          }
    });
  for (auto& th : threads) th.join();
}

}  // namespace gf_simt

#define threadIdx gf_simt::thread_idx
#define blockIdx gf_simt::block_idx
#define blockDim gf_simt::block_dim
#define gridDim gf_simt::grid_dim

inline void __syncthreads() { gf_simt::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  gf_simt::check_mask(mask);
  gf_simt::warp->bar.arrive_and_wait();
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  gf_simt::check_mask(mask);
  const int lane = threadIdx.x % 32;
  return gf_simt::exchange(v, (lane / width) * width + src % width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  gf_simt::check_mask(mask);
  const int lane = threadIdx.x % 32;
  return gf_simt::exchange(v, ((lane ^ lane_mask) % width) + (lane / width) * width);
}
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::max;
using std::min;
