// CPU kernel for gpt_fast::flash_attention: causal self-attention on the packed c_attn output.
//
//   qkv (B, T, 3C) = q | k | v, each read in place as (B, T, H, D) through qkv's strides (no head-split copy);
//   out (B, T, C)  = softmax(q k^T / sqrt(D) + causal and key-padding masks) v, heads merged, ready for c_proj.
//
// Flash attention: each task takes a block of 64 query rows of one (batch, head) and walks the key blocks up to
// the diagonal with an online softmax (fp32 running max and sum per row), so no T x T matrix is ever formed; the
// working set (Q^T, a 64 x 64 score tile, O^T: 48 KiB at D = 64) stays in L1/L2. Tiles are kept transposed
// (query rows along the vector lanes): the score tile S^T[key][query] is built by broadcasting key elements
// against Q^T, so the softmax statistics of a row are plain lane-wise maxima and sums, and P V accumulates into
// O^T by broadcasting value elements.
//
// Two engines compute the two products of a tile (the softmax between them is common fp32 code):
//   - the fp32 engine (this file): fp32 FMA micro-kernels, 6 keys (or dims) x 64 queries per step; compiled for
//     AVX-512, AVX2 + FMA and portable vectors, picked at run time; bf16/fp16 keys and values are converted to
//     fp32 once per call;
//   - the AMX engine (flash_amx.h): bf16 input with D % 32 == 0 on CPUs with AMX-BF16 (e.g. GPT-1 in bf16).
//
// Limits: fp32, bf16, fp16; head size D <= 128 (any D); any T. key_padding_mask (B, T) bool, true = attend; a
// query row with no key to attend gives zeros. qkv must have stride 1 in its last dim, other strides are free.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "checks.h"
#include "cpu/attention_math.h"
#include "cpu/flash_amx.h"
#include "cpu/flash_tiles.h"

namespace gpt_fast {
namespace {
using namespace attention;
using namespace flash;

// S^T[j][:] = sum_d K[j][d] * Q^T[d][:] for NJ keys.
template <int NJ>
GPT_FAST_INLINE void qk_micro(const Tiles& t, const float* k, int64_t k_stride, int64_t D, float* st) {
  VF acc[NJ][kVecQ] = {};
  for (int64_t d = 0; d < D; ++d) {
    VF q[kVecQ];
    for (int v = 0; v < kVecQ; ++v) q[v] = load(&t.qt[d][v * kLanes]);
    for (int j = 0; j < NJ; ++j) {
      const float kb = k[j * k_stride + d];
      for (int v = 0; v < kVecQ; ++v) acc[j][v] += q[v] * kb;
    }
  }
  for (int j = 0; j < NJ; ++j)
    for (int v = 0; v < kVecQ; ++v) store(st + j * kBlockQ + v * kLanes, acc[j][v]);
}

// O^T[d][:] += sum_j V[j][d] * P^T[j][:] for ND head dims.
template <int ND>
GPT_FAST_INLINE void pv_micro(Tiles& t, const float* v, int64_t v_stride, int64_t d0, int64_t nk) {
  VF acc[ND][kVecQ];
  for (int d = 0; d < ND; ++d)
    for (int q = 0; q < kVecQ; ++q) acc[d][q] = load(&t.ot[d0 + d][q * kLanes]);
  for (int64_t j = 0; j < nk; ++j) {
    VF p[kVecQ];
    for (int q = 0; q < kVecQ; ++q) p[q] = load(&t.st[j][q * kLanes]);
    for (int d = 0; d < ND; ++d) {
      const float vb = v[j * v_stride + d0 + d];
      for (int q = 0; q < kVecQ; ++q) acc[d][q] += p[q] * vb;
    }
  }
  for (int d = 0; d < ND; ++d)
    for (int q = 0; q < kVecQ; ++q) store(&t.ot[d0 + d][q * kLanes], acc[d][q]);
}

// Runs F<N> for N = n (1..kMicro); the tails of the micro-kernel loops.
template <template <int> class F, typename... Args>
GPT_FAST_INLINE void with_width(int n, Args&&... args) {
  switch (n) {
    case 1: F<1>::run(args...); break;
    case 2: F<2>::run(args...); break;
    case 3: F<3>::run(args...); break;
    case 4: F<4>::run(args...); break;
    case 5: F<5>::run(args...); break;
    default: F<6>::run(args...); break;
  }
}
template <int N>
struct QK {
  GPT_FAST_INLINE static void run(const Tiles& t, const float* k, int64_t s, int64_t D, float* st) {
    qk_micro<N>(t, k, s, D, st);
  }
};
template <int N>
struct PV {
  GPT_FAST_INLINE static void run(Tiles& t, const float* v, int64_t s, int64_t d0, int64_t nk) {
    pv_micro<N>(t, v, s, d0, nk);
  }
};

// The fp32 engine: keys and values in fp32 (converted once when the input is not), Q^T pre-scaled.
struct Fp32Engine {
  using Elem = float;
  template <typename T>
  GPT_FAST_INLINE static void load_q(const Params& p, Tiles& t, const T* q, int64_t nq) {
    for (int64_t i = 0; i < kBlockQ; ++i)  // row by row: contiguous reads
      for (int64_t d = 0; d < p.D; ++d) t.qt[d][i] = i < nq ? static_cast<float>(q[i * p.q_st + d]) * p.scale : 0.f;
  }
  GPT_FAST_INLINE static void scores(const Params& p, Tiles& t, const float* k, int64_t nk) {
    for (int64_t j = 0; j < nk; j += kMicro)
      with_width<QK>(static_cast<int>(std::min<int64_t>(kMicro, nk - j)), t, k + j * p.kv_st, p.kv_st, p.D,
                     &t.st[j][0]);
  }
  GPT_FAST_INLINE static void pv(const Params& p, Tiles& t, const float* v, int64_t nk, int64_t /*bh*/,
                                 int64_t /*j0*/) {
    for (int64_t d = 0; d < p.D; d += kMicro)
      with_width<PV>(static_cast<int>(std::min<int64_t>(kMicro, p.D - d)), t, v, p.kv_st, d, nk);
  }
};

// One key block [j0, j1) for the query block starting at i0 (nq valid rows): scores, masks, online softmax, P V.
template <typename Engine>
GPT_FAST_INLINE void key_block(const Params& p, Tiles& t, int64_t b, int64_t h, int64_t i0, int64_t j0, int64_t j1) {
  using E = typename Engine::Elem;
  const int64_t nk = j1 - j0;
  const int64_t at = b * p.kv_sb + j0 * p.kv_st + h * p.D;
  Engine::scores(p, t, static_cast<const E*>(p.k) + at, nk);

  // Masks: key j is hidden from query i when j > i (causal) or when the key is padding.
  const bool* mask = p.mask ? p.mask + b * p.T + j0 : nullptr;
  const bool diagonal = j1 - 1 > i0;
  for (int64_t j = 0; j < nk; ++j) {
    if (mask && !mask[j]) {
      for (int q = 0; q < kVecQ; ++q) store(&t.st[j][q * kLanes], splat(kNegInf));
    } else if (diagonal) {
      for (int64_t i = 0; i < std::min<int64_t>(kBlockQ, j0 + j - i0); ++i) t.st[j][i] = kNegInf;  // i < key
    }
  }

  // Online softmax, lane-wise over query rows.
  VF alpha[kVecQ];
  for (int q = 0; q < kVecQ; ++q) {
    VF mx = t.m[q];
    for (int64_t j = 0; j < nk; ++j) mx = vmax(mx, load(&t.st[j][q * kLanes]));
    const VF base = mx == kNegInf ? VF{} : mx;  // rows with nothing to attend yet: keep everything at 0
    alpha[q] = exp2_nonpositive(t.m[q] - base);
    VF sum{};
    for (int64_t j = 0; j < nk; ++j) {
      const VF e = exp2_nonpositive(load(&t.st[j][q * kLanes]) - base);
      store(&t.st[j][q * kLanes], e);
      sum += e;
    }
    t.l[q] = t.l[q] * alpha[q] + sum;
    t.m[q] = mx;
  }
  for (int64_t d = 0; d < p.D; ++d)
    for (int q = 0; q < kVecQ; ++q) store(&t.ot[d][q * kLanes], load(&t.ot[d][q * kLanes]) * alpha[q]);
  Engine::pv(p, t, static_cast<const E*>(p.v) + at, nk, b * p.H + h, j0);
}

template <typename Engine, typename T>
GPT_FAST_INLINE void query_block(const Params& p, Tiles& t, int64_t b, int64_t h, int64_t i0) {
  const int64_t nq = std::min<int64_t>(kBlockQ, p.T - i0);
  Engine::load_q(p, t, static_cast<const T*>(p.q) + b * p.q_sb + i0 * p.q_st + h * p.D, nq);
  for (int64_t d = 0; d < p.D; ++d)
    for (int q = 0; q < kVecQ; ++q) store(&t.ot[d][q * kLanes], VF{});
  for (int q = 0; q < kVecQ; ++q) t.m[q] = splat(kNegInf), t.l[q] = VF{};

  const int64_t key_end = i0 + nq;  // causal: the block's last row sees keys [0, i0 + nq)
  for (int64_t j0 = 0; j0 < key_end; j0 += kBlockK) key_block<Engine>(p, t, b, h, i0, j0, std::min(key_end, j0 + kBlockK));

  T* out = static_cast<T*>(p.out) + (b * p.T + i0) * p.H * p.D + h * p.D;
  float inv[kBlockQ];  // 1 / row sum; 0 for rows that attend to nothing
  for (int64_t i = 0; i < nq; ++i) {
    const float l = t.l[i / kLanes][i % kLanes];
    inv[i] = l > 0.f ? 1.f / l : 0.f;
  }
  for (int64_t i = 0; i < nq; ++i) {  // O^T column i -> output row i
    alignas(64) float row[kMaxHead];
    for (int64_t d = 0; d < p.D; ++d) row[d] = t.ot[d][i] * inv[i];
    float_to_row(row, out + i * p.H * p.D, p.D);
  }
}

// Task k -> (query block, batch, head). Query blocks are ordered 0, n-1, 1, n-2, ... so that any contiguous
// range of tasks (what parallel_for hands a thread) has a balanced share of the causal triangle.
template <typename Engine, typename T>
GPT_FAST_INLINE void run_tasks_with(const Params& p, int64_t begin, int64_t end) {
  auto tiles = std::make_unique<Tiles>();
  const int64_t n_qb = (p.T + kBlockQ - 1) / kBlockQ;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t z = k / (p.B * p.H), bh = k % (p.B * p.H);
    const int64_t qb = z % 2 == 0 ? z / 2 : n_qb - 1 - z / 2;
    query_block<Engine, T>(p, *tiles, bh / p.H, bh % p.H, qb * kBlockQ);
  }
}

template <typename T>
GPT_FAST_INLINE void run_tasks(const Params& p, int64_t begin, int64_t end) {
  run_tasks_with<Fp32Engine, T>(p, begin, end);
}

#ifdef GPT_FAST_HAVE_AMX_ENGINE
GPT_FAST_TARGET_AMX void run_tasks_amx(const Params& p, int64_t begin, int64_t end) {
  amx_load_tile_config();
  run_tasks_with<AmxEngine, c10::BFloat16>(p, begin, end);
  _tile_release();
}
#endif

GPT_FAST_MULTIVERSION(run_tasks_best, run_tasks)

at::Tensor flash_attention_cpu(const at::Tensor& qkv, const std::optional<at::Tensor>& key_padding_mask,
                               int64_t n_head) {
  constexpr const char* op = "gpt_fast::flash_attention";
  const int64_t D = check_packed_qkv(qkv, n_head, op);
  check_last_dim_contiguous(qkv, op, "qkv");
  const int64_t B = qkv.size(0), T = qkv.size(1), C = checked_mul(n_head, D, op, "n_head * head_dim");
  TORCH_CHECK(D >= 1 && D <= kMaxHead, op, ": head size C / n_head = ", D, " must be in [1, ", kMaxHead, "]");
  const at::Tensor mask = check_key_padding_mask(key_padding_mask, qkv, B, T, op);  // (B, T) or undefined
  auto out = at::empty({B, T, C}, qkv.options());
  if (out.numel() == 0) return out;

  const int64_t tasks = (T + kBlockQ - 1) / kBlockQ * B * n_head;
  const float scale = kLog2e / std::sqrt(static_cast<float>(D));
  const bool* mask_ptr = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  const cpu::Isa isa = cpu::cpu_isa();
#ifdef GPT_FAST_HAVE_AMX_ENGINE
  if (qkv.scalar_type() == at::kBFloat16 && D % 32 == 0 && isa >= cpu::Isa::kAmx) {
    const auto* base = static_cast<const c10::BFloat16*>(qkv.const_data_ptr());  // q and k read in place
    const int64_t vt_len = (T + kBlockK - 1) / kBlockK * kBlockK;
    auto vt = at::empty({B * n_head, D, vt_len}, qkv.options());  // V^T per (batch, head), zero-padded
    build_vt(base + 2 * C, qkv.stride(0), qkv.stride(1), B, T, n_head, D, vt.mutable_data_ptr<c10::BFloat16>(),
             vt_len);
    Params p{B, T, n_head, D, base, qkv.stride(0), qkv.stride(1), base + C, base + 2 * C, qkv.stride(0),
             qkv.stride(1), vt.const_data_ptr<c10::BFloat16>(), vt_len, mask_ptr, out.mutable_data_ptr(), scale};
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) { run_tasks_amx(p, begin, end); });
    return out;
  }
#endif
  // Keys and values in fp32: in place for fp32 input, else one conversion of the (B, T, 2C) k | v part.
  at::Tensor kv = qkv.scalar_type() == at::kFloat ? qkv.narrow(2, C, 2 * C)
                                                  : qkv.narrow(2, C, 2 * C).to(at::kFloat);  // (B, T, 2C)
  Params p{B, T, n_head, D, qkv.const_data_ptr(), qkv.stride(0), qkv.stride(1), kv.const_data_ptr<float>(),
           kv.const_data_ptr<float>() + C, kv.stride(0), kv.stride(1), nullptr, 0, mask_ptr, out.mutable_data_ptr(),
           scale};
  with_storage_type(qkv.scalar_type(), [&](auto type) {
    using Elem = decltype(type);
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) { run_tasks_best<Elem>(isa, p, begin, end); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt_fast, CPU, m) { m.impl("flash_attention", &flash_attention_cpu); }

}  // namespace gpt_fast
