#pragma once
// The parameters of the gated delta rule kernels (forward only): raw pointers, sizes, an element
// stride for every dim of every tensor, scalars, and optional inputs prefixed `maybe_` (null
// when absent). Kernels see nothing else: no at::Tensor, no autograd.
//
// Legend used by every file of this folder:
//   B   batch_size      Hqk num_heads_qk     Hv  num_heads_v     G = Hv / Hqk (value heads per
//   qk head; value head h reads qk head h / G)    T   seq_len     Dk  head_dim_qk   Dv head_dim_v
//   C   chunk_size      S   the recurrent state [Dk, Dv] of one (batch, value head)
// The rule, per (b, h): S <- exp(g_t) S; u_t = beta_t (v_t - S^T k_t); S <- S + k_t u_t^T;
// o_t = S^T (scale q_t).

#include <cstdint>

namespace attnkit {
namespace kernels {
namespace gated_delta {

template <typename scalar_t>
struct GatedDeltaParams {
  // Sizes.
  int64_t batch_size = 0;
  int64_t num_heads_qk = 0;
  int64_t num_heads_v = 0;
  int64_t seq_len = 0;
  int64_t head_dim_qk = 0;
  int64_t head_dim_v = 0;
  int64_t chunk_size = 64;

  // q, k: [B, Hqk, T, Dk]
  const scalar_t* q = nullptr;
  int64_t q_stride_b = 0, q_stride_h = 0, q_stride_t = 0, q_stride_d = 1;
  const scalar_t* k = nullptr;
  int64_t k_stride_b = 0, k_stride_h = 0, k_stride_t = 0, k_stride_d = 1;
  // v: [B, Hv, T, Dv]
  const scalar_t* v = nullptr;
  int64_t v_stride_b = 0, v_stride_h = 0, v_stride_t = 0, v_stride_d = 1;
  // g (log decay), beta: [B, Hv, T]
  const scalar_t* g = nullptr;
  int64_t g_stride_b = 0, g_stride_h = 0, g_stride_t = 1;
  const scalar_t* beta = nullptr;
  int64_t beta_stride_b = 0, beta_stride_h = 0, beta_stride_t = 1;
  // initial state: [B, Hv, Dk, Dv], null means zeros
  const scalar_t* maybe_initial_state = nullptr;
  int64_t init_stride_b = 0, init_stride_h = 0, init_stride_k = 0, init_stride_v = 1;

  // out: [B, Hv, T, Dv]
  scalar_t* out = nullptr;
  int64_t out_stride_b = 0, out_stride_h = 0, out_stride_t = 0, out_stride_d = 1;
  // final state: [B, Hv, Dk, Dv]
  scalar_t* final_state = nullptr;
  int64_t final_stride_b = 0, final_stride_h = 0, final_stride_k = 0, final_stride_v = 1;

  // Scalars.
  double scale = 1.0;
};

}  // namespace gated_delta
}  // namespace kernels
}  // namespace attnkit
