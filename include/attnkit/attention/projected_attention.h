#pragma once
// The common body of StandardAttention and MultiQueryAttention: q/k/v/o projections around one
// softmax attention, differing only in how many key/value heads they project.

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/modules/linear.h>

#include <optional>

namespace attnkit {

/// Options of the plain projected mechanisms (StandardAttention, MultiQueryAttention).
/// Example:
///   StandardAttention attn(StandardAttentionOptions(/*dim=*/512, /*num_heads=*/8).causal(true));
struct ProjectedAttentionOptions {
  ProjectedAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Mask future keys (and allow decoding). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Dropout on the attention weights in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Softmax temperature (> 0): logits are q.k / (sqrt(head_dim) * temperature), as attzoo's
  /// temperature; an additive attn_mask is added after that division. Default: 1
  TORCH_ARG(double, temperature) = 1.0;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
  /// Rotary embedding on q and k of every head, at absolute positions (a decode state's tokens
  /// continue at state.length()); unset means none. attzoo's rope=True (pairs (2i, 2i + 1) over
  /// the whole head, theta 10000) is RopeOptions().style(RopeStyle::kInterleaved).
  /// Default: nullopt
  TORCH_ARG(std::optional<RopeOptions>, rope) = std::nullopt;
};

/// Shared implementation; use StandardAttention or MultiQueryAttention.
/// Parameters (Llama-style names, so they share weights with GroupedQueryAttention):
/// q_proj [dim, dim], k_proj and v_proj [num_kv_heads * head_dim, dim], o_proj [dim, dim].
class ProjectedAttentionImpl : public AttentionImpl {
 public:
  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  int64_t dim() const override { return options.dim(); }
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// Key/value heads: num_heads for StandardAttention, 1 for MultiQueryAttention.
  int64_t num_kv_heads() const { return num_kv_heads_; }

  ProjectedAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 protected:
  /// Validates `options`; `num_kv_heads` 0 means one per query head.
  ProjectedAttentionImpl(ProjectedAttentionOptions options, int64_t num_kv_heads, const char* name);
  /// Registers the four projections (and binds the rotary embedding); the derived reset() calls
  /// it.
  void register_projections();

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
  int64_t num_kv_heads_ = 0;
  std::optional<RotaryEmbedding> rope_;
};

}  // namespace attnkit
