#pragma once
// The parameters of the fused attention kernels (forward and backward): raw pointers, sizes, an
// element stride for every dim of every tensor, scalars, and optional inputs prefixed `maybe_`
// (null when absent). Kernels see nothing else: no at::Tensor, no autograd.
//
// Legend used by every file of this folder:
//   B   batch_size       Hq  num_heads_q      Hkv num_heads_kv     G = Hq / Hkv (query heads per kv
//   head) Tq  seq_len_q        Tkv seq_len_kv       D   head_dim         Dv  head_dim_v pos(i) = i
//   + (Tkv - Tq): the key position of query i (bottom-right alignment).
// Scores are natural-log logits: s = scale * q.k, then softcap, ALiBi, bias, score functor, masks.

#include <cstdint>

namespace attnkit {
namespace kernels {
namespace flash {

/// Element type of q, k, v, out (and dout, dq, dk, dv in the backward). Accumulation is fp32.
enum class FlashDtype { kFloat32, kBFloat16 };

/// Row-segment hook of a mask or score functor (the library's RowHook): for query q_idx of head
/// h and keys k0 .. k0 + n - 1 it rewrites scores[0:n] in place; a mask writes -inf over the
/// hidden keys, a score modifier replaces each logit. One indirect call per segment: the
/// functor's body is inlined into the hook's loop where the user's code was compiled.
using FlashRowFn = void (*)(
    const void* functor, int64_t b, int64_t h, int64_t q_idx, int64_t k0, int64_t n, float* scores);

struct FlashParams {
  FlashDtype dtype = FlashDtype::kFloat32;

  // Sizes.
  int64_t batch_size = 0;
  int64_t num_heads_q = 0;
  int64_t num_heads_kv = 0;
  int64_t seq_len_q = 0;
  int64_t seq_len_kv = 0;
  int64_t head_dim = 0;
  int64_t head_dim_v = 0;

  // q: [B, Hq, Tq, D]
  const void* q = nullptr;
  int64_t q_stride_b = 0, q_stride_h = 0, q_stride_t = 0, q_stride_d = 1;
  // k: [B, Hkv, Tkv, D]
  const void* k = nullptr;
  int64_t k_stride_b = 0, k_stride_h = 0, k_stride_t = 0, k_stride_d = 1;
  // v: [B, Hkv, Tkv, Dv]
  const void* v = nullptr;
  int64_t v_stride_b = 0, v_stride_h = 0, v_stride_t = 0, v_stride_d = 1;
  // out: [B, Hq, Tq, Dv]
  void* out = nullptr;
  int64_t out_stride_b = 0, out_stride_h = 0, out_stride_t = 0, out_stride_d = 1;
  // lse: [B, Hq, Tq] fp32, natural log; -inf for a fully masked row without a sink.
  float* lse = nullptr;
  int64_t lse_stride_b = 0, lse_stride_h = 0, lse_stride_t = 1;

  // Scalars.
  float scale = 1.0f;
  bool causal = false;
  /// Key j visible only if j >= pos(i) - window_left; < 0 means unbounded.
  int64_t window_left = -1;
  /// Key j visible only if j <= pos(i) + window_right; < 0 means unbounded.
  int64_t window_right = -1;
  /// s <- softcap * tanh(s / softcap); 0 means off.
  float softcap = 0.0f;

  /// [Hq] fp32 sink logits (unscaled, natural log), folded into every row's denominator.
  const float* maybe_sinks = nullptr;
  /// [Hq] fp32 ALiBi slopes: s <- s + slope[h] * (j - pos(i)).
  const float* maybe_alibi_slopes = nullptr;
  /// Additive fp32 bias broadcast to [B, Hq, Tq, Tkv] (stride 0 on broadcast dims).
  const float* maybe_bias = nullptr;
  int64_t bias_stride_b = 0, bias_stride_h = 0, bias_stride_q = 0, bias_stride_k = 0;
  /// Boolean keep mask (1 = visible) broadcast to [B, Hq, Tq, Tkv].
  const uint8_t* maybe_keep = nullptr;
  int64_t keep_stride_b = 0, keep_stride_h = 0, keep_stride_q = 0, keep_stride_k = 0;

  // Block mask (FlexAttention layout), broadcast to [B, Hq, num_q_blocks(, max_blocks)].
  // Blocks listed in kv_indices are partial (maybe_mask_row applied), blocks listed in
  // full_kv_indices are visited without it, other blocks are skipped.
  const int32_t* maybe_kv_num_blocks = nullptr;
  const int32_t* maybe_kv_indices = nullptr;
  const int32_t* maybe_full_kv_num_blocks = nullptr;
  const int32_t* maybe_full_kv_indices = nullptr;
  int64_t kv_num_blocks_stride_b = 0, kv_num_blocks_stride_h = 0, kv_num_blocks_stride_q = 0;
  int64_t kv_indices_stride_b = 0, kv_indices_stride_h = 0, kv_indices_stride_q = 0;
  int64_t full_kv_num_blocks_stride_b = 0, full_kv_num_blocks_stride_h = 0,
          full_kv_num_blocks_stride_q = 0;
  int64_t full_kv_indices_stride_b = 0, full_kv_indices_stride_h = 0, full_kv_indices_stride_q = 0;
  int64_t num_kv_blocks = 0;  // ceil(Tkv / block_k)
  int64_t block_q = 0;
  int64_t block_k = 0;

  // Element functors (built-in rules above are native). The mask applies in partial blocks
  // (every visited block without a block mask), the score modifier on every visible key.
  FlashRowFn maybe_mask_row = nullptr;
  const void* mask_functor = nullptr;
  FlashRowFn maybe_score_row = nullptr;
  const void* score_functor = nullptr;

  bool has_block_mask() const { return maybe_kv_num_blocks != nullptr; }
};

/// Extra pointers of the backward pass (same layout conventions as FlashParams).
struct FlashBackwardParams {
  // dout: [B, Hq, Tq, Dv]
  const void* dout = nullptr;
  int64_t dout_stride_b = 0, dout_stride_h = 0, dout_stride_t = 0, dout_stride_d = 1;
  // dq: [B, Hq, Tq, D], dk: [B, Hkv, Tkv, D], dv: [B, Hkv, Tkv, Dv]; fp32, contiguous.
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  /// [Hq] fp32 gradient of the sinks (null when there are no sinks).
  float* maybe_dsinks = nullptr;
  /// [B, Hq, Tq, Tkv] fp32 gradient of the logits (dS), contiguous, when the bias needs a
  /// gradient; the op layer reduces it over the bias's broadcast dims.
  float* maybe_dbias = nullptr;
};

}  // namespace flash
}  // namespace kernels
}  // namespace attnkit
