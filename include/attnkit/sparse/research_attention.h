#pragma once
// Research attention: attention under a mask composed by a list of maskers (sparse-attention-
// hub's ResearchAttention), computed on the sparse kernels.

#include <attnkit/sparse/masker.h>

#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

namespace attnkit {
namespace sparse {

/// What `ResearchAttention::custom_attention` returns.
struct ResearchAttentionResult {
  /// [B, Tq, H, Dv] (time-major, as upstream), the dtype of the queries.
  torch::Tensor output;
  /// [B, H, Tq, Tk] attention weights when asked for, else undefined.
  torch::Tensor weights;
  /// The mask the maskers built.
  Mask mask;
};

/// Attention under a mask: with s = q.k * scaling + attention_mask and m the mask,
///   w_j = exp(s_j - max s) / (m_j + 1e-6) where m_j > 0, else 0;  out = sum_j w_j v_j / sum_j w_j
/// (Horvitz-Thompson weighting: a key sampled with probability p counts 1/p times). A FULL or
/// EMPTY mask means plain softmax attention. A row whose active keys are all masked out (-inf)
/// gives zeros, never NaN. GQA: query head h reads kv head h / (H / Hkv).
///   queries [B, H, Tq, D], keys [B, Hkv, Tk, D], values [B, Hkv, Tk, Dv], mask [B, H, Tq, Tk],
///   attention_mask additive [B, 1 or H, Tq, >= Tk] or undefined -> [B, Tq, H, Dv]
/// fp32 and bf16 on the CPU run the gather kernel over the mask's row lists (O(Tq * kept keys)
/// memory) unless ATTNKIT_BACKEND=reference, dropout > 0 or the weights are asked for, which run
/// `masked_attention_reference`. FULL and EMPTY run dot_product_attention.
torch::Tensor masked_attention(const torch::Tensor& queries,
                               const torch::Tensor& keys,
                               const torch::Tensor& values,
                               const Mask& mask,
                               const torch::Tensor& attention_mask,
                               double scaling);

/// The same by composition of torch ops over dense [B, H, Tq, Tk] scores (upstream's algorithm,
/// plus the zero rows): the reference. dropout (applied to the weights when > 0, as upstream in
/// training) and the weights [B, H, Tq, Tk] (returned through `weights` when not null).
torch::Tensor masked_attention_reference(const torch::Tensor& queries,
                                         const torch::Tensor& keys,
                                         const torch::Tensor& values,
                                         const Mask& mask,
                                         const torch::Tensor& attention_mask,
                                         double scaling,
                                         double dropout = 0.0,
                                         torch::Tensor* weights = nullptr);

/// Plain softmax attention with the additive mask (no sparsity), [B, Tq, H, Dv]: what the
/// evaluation compares against.
torch::Tensor dense_attention(const torch::Tensor& queries,
                              const torch::Tensor& keys,
                              const torch::Tensor& values,
                              const torch::Tensor& attention_mask,
                              double scaling);

/// A list of maskers and the attention under the mask they build.
/// Example:
///   auto ra = sparse::ResearchAttention::from_json(R"([{"type":"sink","sink_size":128},
///       {"type":"local","window_size":128},{"type":"oracle_top_k","heavy_size":0.1}])");
///   sparse::MaskerState state;
///   auto r = ra.custom_attention(q, k, v, {}, 0.125, 0.0, state, /*layer_idx=*/0);
class ResearchAttention {
 public:
  /// Raises when more than one masker is a sampling masker.
  explicit ResearchAttention(std::vector<MaskerPtr> maskers);
  /// From a JSON array of masker objects (see `make_maskers`).
  static ResearchAttention from_json(const std::string& json_array);

  const std::vector<MaskerPtr>& maskers() const { return maskers_; }

  /// The mask: EMPTY, then each masker's add_mask in order. Arguments as `custom_attention`.
  Mask build_mask(const torch::Tensor& queries,
                  const torch::Tensor& keys,
                  const torch::Tensor& values,
                  const torch::Tensor& attention_mask,
                  double scaling,
                  double dropout,
                  MaskerState& state,
                  std::optional<int64_t> layer_idx = std::nullopt) const;

  /// The maskers' mask, then `masked_attention` under it (`masked_attention_reference` when
  /// dropout > 0 in training or need_weights).
  ///   queries [B, H, Tq, D], keys [B, Hkv, Tk, D], values [B, Hkv, Tk, Dv],
  ///   attention_mask additive [B, 1 or H, Tq, >= Tk] or undefined.
  /// dropout applies only when `training`.
  ResearchAttentionResult custom_attention(const torch::Tensor& queries,
                                           const torch::Tensor& keys,
                                           const torch::Tensor& values,
                                           const torch::Tensor& attention_mask,
                                           double scaling,
                                           double dropout,
                                           MaskerState& state,
                                           std::optional<int64_t> layer_idx = std::nullopt,
                                           bool need_weights = false,
                                           bool training = false) const;

 private:
  std::vector<MaskerPtr> maskers_;
};

}  // namespace sparse
}  // namespace attnkit
