// Test harness: runs the real gpt_fast CUDA launchers and kernels (csrc/cuda/*.cu, compiled as C++ on top of
// simt.h) on CPU threads. Inputs and outputs are raw little-endian files in a folder, written and checked by
// tests/test_cuda_simt.py against gpt_fast.reference:
//   run_kernels add_layernorm    DTYPE DIR rows C has_bias eps [p seed]  x residual [bias] weight ln_bias -> out
//   run_kernels bias_gelu        DTYPE DIR total N                 x bias -> out
//   run_kernels bias_gelu_backward DTYPE DIR total N               grad_out x bias -> grad_x
//   run_kernels add_layernorm_backward DTYPE DIR rows C has_bias eps [p seed]  grad_out x residual [bias] weight
//                                                   -> grad_v grad_weight grad_ln_bias [grad_residual when p > 0]
//   run_kernels flash_attention  DTYPE DIR B T H D has_mask        qkv [mask] -> out
//   run_kernels decode_attention DTYPE DIR B S H D Tmax sm_count   qkv k_cache v_cache lengths -> out k_cache v_cache
//   run_kernels decode_attention_short_cache ...   the same with caches one position short (for the guard check)
//   run_kernels linear_quantized DTYPE DIR M K N bits G has_bias has_residual gelu
//                                                                 x packed [bias] [residual] -> out
// DTYPE is float32, bfloat16 or float16. Prints the decode split count it used. Buffers sit between guard zones;
// a decode launch that wrote into one exits with status 4 ("write outside NAME").
#include "simt.h"
// The launchers, kernels included, exactly as nvcc builds them:
#include "../../csrc/cuda/add_layernorm.cu"
#include "../../csrc/cuda/add_layernorm_backward.cu"
#include "../../csrc/cuda/bias_gelu.cu"
#include "../../csrc/cuda/bias_gelu_backward.cu"
#include "../../csrc/cuda/decode_attention.cu"
#include "../../csrc/cuda/flash_attention.cu"
#include "../../csrc/cuda/linear_quantized.cu"
#include "buffers.h"

#include <cstring>
#include <string>

using namespace gpt_fast::cuda;  // NOLINT: a test program's one file
using namespace gf_simt_io;      // NOLINT

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: run_kernels OP DTYPE DIR ARGS...\n");
    return 2;
  }
  const std::string op = argv[1], dt = argv[2], dir = argv[3];
  const DType dtype = dt == "bfloat16" ? DType::kBFloat16 : dt == "float16" ? DType::kFloat16 : DType::kFloat32;
  const size_t es = dtype == DType::kFloat32 ? 4 : 2;
  auto arg = [&](int i) { return std::atoll(argv[4 + i]); };
  // add_layernorm's optional dropout: p (argv[8]) and a decimal uint64 seed (argv[9])
  const double dropout_p = argc > 8 ? std::strtod(argv[8], nullptr) : 0.0;
  const uint64_t seed = argc > 9 ? std::strtoull(argv[9], nullptr, 10) : 0;

  if (op == "add_layernorm") {
    const int64_t rows = arg(0);
    const int C = static_cast<int>(arg(1));
    const bool has_bias = arg(2) != 0;
    const float eps = std::strtof(argv[7], nullptr);
    Buffer x = read_file(dir, "x", rows * C * es), r = read_file(dir, "residual", rows * C * es);
    Buffer bias = has_bias ? read_file(dir, "bias", C * es) : Buffer{};
    Buffer w = read_file(dir, "weight", C * es), lb = read_file(dir, "ln_bias", C * es), out = zeros(rows * C * es);
    check(launch_add_layernorm(dtype, x.data(), r.data(), has_bias ? bias.data() : nullptr, w.data(), lb.data(),
                               out.data(), rows, C, eps, dropout_p, seed, nullptr));
    write_file(dir, "out", out);
  } else if (op == "bias_gelu") {
    const int64_t total = arg(0), N = arg(1);
    Buffer x = read_file(dir, "x", total * es), bias = read_file(dir, "bias", N * es), out = zeros(total * es);
    check(launch_bias_gelu(dtype, x.data(), bias.data(), out.data(), total, N, nullptr));
    write_file(dir, "out", out);
  } else if (op == "add_layernorm_backward") {
    const int64_t rows = arg(0);
    const int C = static_cast<int>(arg(1));
    const bool has_bias = arg(2) != 0;
    const float eps = std::strtof(argv[7], nullptr);
    Buffer g = read_file(dir, "grad_out", rows * C * es), x = read_file(dir, "x", rows * C * es);
    Buffer r = read_file(dir, "residual", rows * C * es), w = read_file(dir, "weight", C * es);
    Buffer bias = has_bias ? read_file(dir, "bias", C * es) : Buffer{};
    Buffer dv = zeros(rows * C * es), dw = zeros(C * es), db = zeros(C * es);
    Buffer dr = zeros(dropout_p > 0 ? rows * C * es : 0);
    Buffer work = zeros(add_layernorm_backward_workspace_bytes(rows, C));
    check(launch_add_layernorm_backward(dtype, g.data(), x.data(), r.data(), has_bias ? bias.data() : nullptr,
                                        w.data(), dv.data(), dw.data(), db.data(),
                                        dropout_p > 0 ? dr.data() : nullptr, work.data(), rows, C, eps, dropout_p,
                                        seed, nullptr));
    check_guards(dv, "grad_v"), check_guards(dw, "grad_weight"), check_guards(db, "grad_ln_bias");
    if (dropout_p > 0) check_guards(dr, "grad_residual"), write_file(dir, "grad_residual", dr);
    check_guards(work, "workspace");
    write_file(dir, "grad_v", dv);
    write_file(dir, "grad_weight", dw);
    write_file(dir, "grad_ln_bias", db);
  } else if (op == "bias_gelu_backward") {
    const int64_t total = arg(0), N = arg(1);
    Buffer g = read_file(dir, "grad_out", total * es), x = read_file(dir, "x", total * es);
    Buffer bias = read_file(dir, "bias", N * es), out = zeros(total * es);
    check(launch_bias_gelu_backward(dtype, g.data(), x.data(), bias.data(), out.data(), total, N, nullptr));
    check_guards(out, "grad_x");
    write_file(dir, "grad_x", out);
  } else if (op == "flash_attention") {
    const int B = static_cast<int>(arg(0)), T = static_cast<int>(arg(1)), H = static_cast<int>(arg(2)),
              D = static_cast<int>(arg(3));
    const bool has_mask = arg(4) != 0;
    Buffer qkv = read_file(dir, "qkv", size_t(B) * T * 3 * H * D * es);
    Buffer mask = has_mask ? read_file(dir, "mask", size_t(B) * T) : Buffer{};
    Buffer out = zeros(size_t(B) * T * H * D * es);
    check(launch_flash_attention(dtype, qkv.data(), has_mask ? static_cast<const uint8_t*>(mask.data()) : nullptr,
                                 out.data(), B, T, H, D, nullptr));
    write_file(dir, "out", out);
  } else if (op == "decode_attention" || op == "decode_attention_short_cache") {
    const int B = static_cast<int>(arg(0)), S = static_cast<int>(arg(1)), H = static_cast<int>(arg(2)),
              D = static_cast<int>(arg(3)), Tmax = static_cast<int>(arg(4)), sms = static_cast<int>(arg(5));
    // the guard check's own test: caches one position shorter than the launch is told (B = H = 1)
    const int positions = op == "decode_attention_short_cache" ? Tmax - 1 : Tmax;
    const size_t cache = size_t(B) * H * positions * D * es;
    Buffer qkv = read_file(dir, "qkv", size_t(B) * S * 3 * H * D * es);
    Buffer kc = read_file(dir, "k_cache", cache), vc = read_file(dir, "v_cache", cache);
    Buffer lengths = read_file(dir, "lengths", size_t(B) * 8);
    Buffer out = zeros(size_t(B) * S * H * D * es);
    const DecodePlan plan = plan_decode_attention(B, S, H, D, Tmax, sms);
    Buffer work = zeros(plan.workspace_bytes);
    check(launch_decode_attention(dtype, plan, qkv.data(), kc.data(), vc.data(),
                                  static_cast<const int64_t*>(lengths.data()), out.data(), work.data(), B, S, H, D,
                                  Tmax, nullptr));
    check_guards(kc, "k_cache"), check_guards(vc, "v_cache"), check_guards(out, "out"), check_guards(work, "work");
    write_file(dir, "out", out);
    write_file(dir, "k_cache", kc);
    write_file(dir, "v_cache", vc);
    std::printf("splits=%d\n", plan.splits);
  } else if (op == "linear_quantized") {
    const int64_t M = arg(0), N = arg(2);
    const int K = static_cast<int>(arg(1)), bits = static_cast<int>(arg(3)), G = static_cast<int>(arg(4));
    const bool has_bias = arg(5) != 0, has_residual = arg(6) != 0, gelu = arg(7) != 0;
    const size_t block_bytes = bits == 8 ? size_t(K + 4) * 16 : size_t(K / G) * (8 * G + 64);
    Buffer x = read_file(dir, "x", size_t(M) * K * es);
    Buffer packed = read_file(dir, "packed", size_t((N + 15) / 16) * block_bytes);
    Buffer bias = has_bias ? read_file(dir, "bias", N * es) : Buffer{};
    Buffer res = has_residual ? read_file(dir, "residual", size_t(M) * N * es) : Buffer{};
    Buffer out = zeros(size_t(M) * N * es);
    check(launch_linear_quantized(dtype, x.data(), static_cast<const uint8_t*>(packed.data()),
                                  has_bias ? bias.data() : nullptr, has_residual ? res.data() : nullptr, out.data(), M,
                                  K, N, bits, G, N, gelu, nullptr));
    check_guards(out, "out");
    write_file(dir, "out", out);
  } else {
    std::fprintf(stderr, "unknown op %s\n", op.c_str());
    return 2;
  }
  return 0;
}
