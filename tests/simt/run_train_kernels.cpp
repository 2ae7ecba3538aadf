// Test harness for the CUDA training attention kernels (csrc/cuda/flash_attention_train.cu and
// flash_attention_backward.cu, compiled as C++ on top of simt.h, run on CPU threads). Inputs and outputs are raw
// little-endian files in a folder, written and checked by tests/test_cuda_simt_train.py:
//   run_train_kernels flash_attention_train    DTYPE DIR B T H D has_mask p seed   qkv [mask] -> out lse
//   run_train_kernels flash_attention_backward DTYPE DIR B T H D has_mask p seed
//                                              grad_out qkv out lse [mask] -> grad_qkv
// DTYPE is float32, bfloat16 or float16; seed is the decimal uint64 value. Every buffer sits between guard zones;
// a launch that wrote outside one exits with status 4 ("write outside NAME").
#include "simt.h"
// The launchers, kernels included, exactly as nvcc builds them:
#include "../../csrc/cuda/flash_attention_backward.cu"
#include "../../csrc/cuda/flash_attention_train.cu"
#include "buffers.h"

#include <string>

using namespace gpt_fast::cuda;  // NOLINT: a test program's one file
using namespace gf_simt_io;      // NOLINT

int main(int argc, char** argv) {
  if (argc != 11) {
    std::fprintf(stderr, "usage: run_train_kernels OP DTYPE DIR B T H D has_mask p seed\n");
    return 2;
  }
  const std::string op = argv[1], dt = argv[2], dir = argv[3];
  const DType dtype = dt == "bfloat16" ? DType::kBFloat16 : dt == "float16" ? DType::kFloat16 : DType::kFloat32;
  const size_t es = dtype == DType::kFloat32 ? 4 : 2;
  const int B = std::atoi(argv[4]), T = std::atoi(argv[5]), H = std::atoi(argv[6]), D = std::atoi(argv[7]);
  const bool has_mask = std::atoi(argv[8]) != 0;
  const double p = std::strtod(argv[9], nullptr);
  const uint64_t seed = std::strtoull(argv[10], nullptr, 10);
  const size_t rows = size_t(B) * T, C = size_t(H) * D;
  Buffer qkv = read_file(dir, "qkv", rows * 3 * C * es);
  Buffer mask = has_mask ? read_file(dir, "mask", rows) : Buffer{};
  const uint8_t* mask_ptr = has_mask ? static_cast<const uint8_t*>(mask.data()) : nullptr;

  if (op == "flash_attention_train") {
    Buffer out = zeros(rows * C * es), lse = zeros(size_t(B) * H * T * 4);
    check(launch_flash_attention_train(dtype, qkv.data(), mask_ptr, out.data(), static_cast<float*>(lse.data()), B, T,
                                       H, D, p, seed, nullptr));
    check_guards(out, "out"), check_guards(lse, "lse");
    write_file(dir, "out", out);
    write_file(dir, "lse", lse);
  } else if (op == "flash_attention_backward") {
    Buffer grad_out = read_file(dir, "grad_out", rows * C * es), out = read_file(dir, "out", rows * C * es);
    Buffer lse = read_file(dir, "lse", size_t(B) * H * T * 4);
    Buffer grad_qkv = zeros(rows * 3 * C * es), work = zeros(flash_attention_backward_workspace_bytes(B, T, H));
    std::memset(grad_qkv.data(), 0xFF, grad_qkv.bytes);  // NaN everywhere: every element must be written
    check(launch_flash_attention_backward(dtype, grad_out.data(), qkv.data(), out.data(),
                                          static_cast<const float*>(lse.data()), mask_ptr, grad_qkv.data(),
                                          work.data(), B, T, H, D, p, seed, nullptr));
    check_guards(grad_qkv, "grad_qkv"), check_guards(work, "workspace");
    write_file(dir, "grad_qkv", grad_qkv);
  } else {
    std::fprintf(stderr, "unknown op %s\n", op.c_str());
    return 2;
  }
  return 0;
}
