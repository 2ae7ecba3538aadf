// File-backed buffers for the SIMT harnesses (run_kernels.cpp, run_train_kernels.cpp): each buffer sits between
// two guard zones, so that a kernel writing outside it is caught (exit status 4, "write outside NAME").
#pragma once
#include <vector_functions.h>
#include <vector_types.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace gf_simt_io {

// 16-byte aligned bytes (the kernels' 128-bit loads need it), between two guard zones of kGuard words filled with
// a pattern: intact_guards() says whether a kernel wrote outside the buffer (within kGuard words of it).
constexpr size_t kGuard = 4;
constexpr unsigned kGuardWord = 0xA5A5A5A5u;

struct Buffer {
  std::vector<uint4> words;
  size_t bytes = 0;
  void* data() { return words.data() + kGuard; }
  void allocate(size_t n) {
    bytes = n;
    words.assign((n + 15) / 16 + 2 * kGuard, make_uint4(kGuardWord, kGuardWord, kGuardWord, kGuardWord));
    std::memset(data(), 0, n);
  }
  bool intact_guards() const {
    const auto* first = reinterpret_cast<const unsigned char*>(words.data());
    const size_t guard = kGuard * 16, total = words.size() * 16;
    for (size_t i = 0; i < total; ++i) {
      if (i >= guard && i < guard + bytes) i = guard + bytes;  // skip the data
      if (i < total && first[i] != 0xA5) return false;
    }
    return true;
  }
};

inline Buffer read_file(const std::string& dir, const std::string& name, size_t bytes) {
  Buffer b;
  b.allocate(bytes);
  std::ifstream in(dir + "/" + name, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(bytes))) {
    std::fprintf(stderr, "cannot read %zu bytes from %s/%s\n", bytes, dir.c_str(), name.c_str());
    std::exit(2);
  }
  return b;
}

inline Buffer zeros(size_t bytes) {
  Buffer b;
  b.allocate(bytes);
  return b;
}

inline void check_guards(const Buffer& b, const char* name) {
  if (!b.intact_guards()) {
    std::fprintf(stderr, "write outside %s\n", name);
    std::exit(4);
  }
}

inline void write_file(const std::string& dir, const std::string& name, Buffer& b) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.bytes));
}

inline void check(cudaError_t err) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "launch failed: %d\n", static_cast<int>(err));
    std::exit(3);
  }
}

}  // namespace gf_simt_io
