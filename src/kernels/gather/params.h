#pragma once
// Parameters of the gather attention kernels: every query attends to its own list of keys.
// Legend: B batch, Hq / Hkv query / kv heads (G = Hq / Hkv), Tq queries, Tkv keys, K keys per
// query (index -1 = unused slot), D / Dv head dims. Indices and weights are per kv head, shared
// by the G query heads of the group, which is what lets one key load serve all of them.

#include <algorithm>
#include <cstdint>

#include "kernels/flash/params.h"

namespace attnkit {
namespace kernels {
namespace gather {

using flash::FlashDtype;

struct GatherParams {
  FlashDtype dtype = FlashDtype::kFloat32;
  int64_t batch_size = 0, num_heads_q = 0, num_heads_kv = 0, seq_len_q = 0, seq_len_kv = 0;
  int64_t head_dim = 0, head_dim_v = 0, num_keys = 0;
  // q: [B, Hq, Tq, D], k: [B, Hkv, Tkv, D], v: [B, Hkv, Tkv, Dv], out: [B, Hq, Tq, Dv]
  const void* q = nullptr;
  int64_t q_stride_b = 0, q_stride_h = 0, q_stride_t = 0, q_stride_d = 1;
  const void* k = nullptr;
  int64_t k_stride_b = 0, k_stride_h = 0, k_stride_t = 0, k_stride_d = 1;
  const void* v = nullptr;
  int64_t v_stride_b = 0, v_stride_h = 0, v_stride_t = 0, v_stride_d = 1;
  void* out = nullptr;   // contiguous
  float* lse = nullptr;  // [B, Hq, Tq] contiguous
  // indices: [B, Hkv, Tq, K] int64 (indices) or int32 (indices32) contiguous, -1 = unused
  const int64_t* indices = nullptr;
  const int32_t* indices32 = nullptr;
  // weights: [B, Hkv, Tq, K] fp32 contiguous, multiplies key j's softmax numerator
  const float* maybe_weights = nullptr;
  // sinks: [Hq] fp32 logits (natural log, unscaled), folded into every row's denominator; the
  // lse then includes them, so the backward's p = w exp(s - lse) needs no change.
  const float* maybe_sinks = nullptr;
  float scale = 1.0f;
  // indices (and weights) are [B, 1, Tq, K]: one list per query, shared by every kv head.
  bool shared_lists = false;
  // A list entry e names the keys [e * block_size, e * block_size + block_size) that exist
  // (< Tkv): a list row has slots() = K * block_size slots, slot n in entry n / block_size.
  int64_t block_size = 1;
  // Keys after the query (j > i + Tkv - Tq, bottom-right aligned) are dropped from its list.
  bool causal = false;

  int64_t slots() const { return num_keys * block_size; }
  /// One past the last key query i may use.
  int64_t key_end(int64_t i) const {
    return causal ? std::min(seq_len_kv, i + seq_len_kv - seq_len_q + 1) : seq_len_kv;
  }
  /// Entry e of list row `row`.
  int64_t index(int64_t row, int64_t e) const {
    return indices32 != nullptr ? indices32[row * num_keys + e] : indices[row * num_keys + e];
  }
  /// keys[n] = the key of slot n of query i's list (list row `row`), or -1 (unused, past Tkv,
  /// future).
  void row_keys(int64_t row, int64_t i, int64_t* keys) const {
    const int64_t end = key_end(i);
    for (int64_t e = 0; e < num_keys; ++e) {
      const int64_t entry = index(row, e);
      for (int64_t c = 0; c < block_size; ++c) {
        const int64_t j = entry * block_size + c;
        keys[e * block_size + c] = entry >= 0 && j < end ? j : -1;
      }
    }
  }

  /// Offset / K of the list of work row (b * Hkv + hkv) * Tq + i.
  int64_t list_row(int64_t row) const {
    return shared_lists ? row / (num_heads_kv * seq_len_q) * seq_len_q + row % seq_len_q : row;
  }
};

struct GatherBackwardParams {
  const void* dout = nullptr;       // [B, Hq, Tq, Dv] contiguous, dtype of q
  float* dq = nullptr;              // [B, Hq, Tq, D] fp32 contiguous
  float* dk = nullptr;              // [B, Hkv, Tkv, D]
  float* dv = nullptr;              // [B, Hkv, Tkv, Dv]
  float* maybe_dweights = nullptr;  // [B, Hkv, Tq, K]
};

/// Entry points: the ISA path of selected_capability() (kernels/cpu/capability.h) (dispatch.cpp).
void gather_forward(const GatherParams& p);
void gather_backward(const GatherParams& p, const GatherBackwardParams& g);

// Per-ISA implementations.
void gather_forward_reference(const GatherParams& p);
void gather_backward_reference(const GatherParams& p, const GatherBackwardParams& g);
namespace avx2 {
void gather_forward(const GatherParams& p);
void gather_backward(const GatherParams& p, const GatherBackwardParams& g);
}  // namespace avx2
namespace avx512 {
void gather_forward(const GatherParams& p);
void gather_backward(const GatherParams& p, const GatherBackwardParams& g);
}  // namespace avx512

}  // namespace gather
}  // namespace kernels
}  // namespace attnkit
