#pragma once
// Parameters of the fused index top-k kernels (functional::index_topk): score every visible key
// of every query row with a weighted sum of per-head (ReLU) logits, reduce keys to units of
// block_size, keep the top_k units per row.
// Legend: B batch, G query groups, Tq queries, Tk keys, Hi heads summed per row, Di head dim,
// K = top_k, bs = block_size, U = ceil(Tk / bs) units. pos(i) = i + (Tk - Tq).

#include <cstdint>

namespace attnkit {
namespace kernels {
namespace indexer {

/// Element type of q and k (w is always fp32). Scores are computed in fp32.
enum class IndexDtype { kFloat32, kBFloat16 };

struct IndexTopkParams {
  IndexDtype dtype = IndexDtype::kFloat32;
  int64_t batch_size = 0, num_groups = 0, seq_len_q = 0, seq_len_kv = 0;
  int64_t num_heads = 0, head_dim = 0, top_k = 0, block_size = 1;
  // q: [B, G, Tq, Hi, Di]
  const void* q = nullptr;
  int64_t q_stride_b = 0, q_stride_g = 0, q_stride_t = 0, q_stride_h = 0, q_stride_d = 1;
  // k: [B, Tk, Di]
  const void* k = nullptr;
  int64_t k_stride_b = 0, k_stride_t = 0, k_stride_d = 1;
  // w: [B, G, Tq, Hi] fp32; null = all ones
  const float* maybe_w = nullptr;
  int64_t w_stride_b = 0, w_stride_g = 0, w_stride_t = 0, w_stride_h = 0;
  // keep: [B, Tq, Tk] uint8 (1 = may be scored), stride 0 on a broadcast batch; null = all
  const uint8_t* maybe_keep = nullptr;
  int64_t keep_stride_b = 0, keep_stride_q = 0, keep_stride_k = 1;
  // key_limit: [Tq] int64; query i scores keys j < key_limit[i] only; null = no limit
  const int64_t* maybe_key_limit = nullptr;
  float scale = 1.0f;
  bool relu = true;
  bool causal = false;
  // out: [B, G, Tq, K] int64 contiguous, or out32 int32: unit ids ascending, -1 in unused slots.
  int64_t* out = nullptr;
  int32_t* out32 = nullptr;

  /// Where row `row` of the output goes: straight into out, or into `scratch` (K int64) when
  /// the output is int32 (finish_row narrows it).
  int64_t* row_out(int64_t row, int64_t* scratch) const {
    return out32 != nullptr ? scratch : out + row * top_k;
  }
  void finish_row(int64_t row, const int64_t* written) const {
    if (out32 == nullptr) return;
    for (int64_t n = 0; n < top_k; ++n) out32[row * top_k + n] = static_cast<int32_t>(written[n]);
  }
};

/// Entry point: the ISA path of selected_capability() (kernels/cpu/capability.h) (dispatch.cpp).
void index_topk(const IndexTopkParams& p);

// Per-ISA implementations.
void index_topk_reference(const IndexTopkParams& p);
namespace avx2 {
void index_topk(const IndexTopkParams& p);
}  // namespace avx2
namespace avx512 {
void index_topk(const IndexTopkParams& p);
}  // namespace avx512

}  // namespace indexer
}  // namespace kernels
}  // namespace attnkit
