#pragma once
// Grouped-query attention (Ainslie et al., 2023, "GQA"), with the options of Llama/Qwen-style
// layers (d9d): independent head_dim, per-head QK RMSNorm, partial RoPE, a sigmoid output gate
// (Qwen 3.5), sliding window and learnable attention sinks (gpt-oss).

#include <attnkit/attention/attention.h>
#include <attnkit/core/rms_norm.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `GroupedQueryAttention`.
/// Example:
///   GroupedQueryAttention attn(GroupedQueryAttentionOptions(512, 8, 2)
///       .causal(true).qk_norm_eps(1e-6).rope(RopeOptions().theta(1e6)));
struct GroupedQueryAttentionOptions {
  GroupedQueryAttentionOptions(int64_t dim, int64_t num_heads, int64_t num_kv_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Number of key/value heads; query head h reads kv head h / (num_heads / num_kv_heads).
  /// Required.
  TORCH_ARG(int64_t, num_kv_heads);
  /// Width of one head. 0 means dim / num_heads. Default: 0
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Mask future keys (and allow decoding). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Dropout on the attention weights in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Softmax temperature (> 0): logits are q.k / (sqrt(head_dim) * temperature), as attzoo's
  /// temperature; an additive attn_mask and the sinks are not divided. Default: 1
  TORCH_ARG(double, temperature) = 1.0;
  /// Bias on the q, k, v, gate and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
  /// Per-head RMSNorm on q and k with this epsilon; unset means none. Default: nullopt
  TORCH_ARG(std::optional<double>, qk_norm_eps) = std::nullopt;
  /// Store the QK norm weights zero-centered (applied as 1 + w; Qwen 3.5). Default: false
  TORCH_ARG(bool, qk_norm_zero_centered) = false;
  /// Rotary embedding on q and k; unset means none. Default: nullopt
  TORCH_ARG(std::optional<RopeOptions>, rope) = std::nullopt;
  /// Multiply the attention output by sigmoid(gate_proj(x)) before o_proj (Qwen 3.5). Default:
  /// false
  TORCH_ARG(bool, output_gate) = false;
  /// Sliding window: a query sees at most this many earlier keys; unset means all. Default: nullopt
  TORCH_ARG(std::optional<int64_t>, window_left) = std::nullopt;
  /// Sliding window: a query sees at most this many later keys (non-causal only); unset means
  /// all. Default: nullopt
  TORCH_ARG(std::optional<int64_t>, window_right) = std::nullopt;
  /// One learnable sink logit per query head (`sinks` [num_heads], zeros). Default: false
  TORCH_ARG(bool, sinks) = false;
};

/// Grouped-query attention. x: [B, T, dim] -> [B, T, dim].
/// Parameters (Llama/Qwen checkpoint names): q_proj [H*hd, dim], k_proj [Hkv*hd, dim],
/// v_proj [Hkv*hd, dim], o_proj [dim, H*hd]; with options: q_norm, k_norm [hd],
/// gate_proj [H*hd, dim], sinks [H]. RoPE rotates the first rope.dim channels of each head by
/// default (RopeChannels::kFirst), rotate-half style (RopeStyle::kHalf).
class GroupedQueryAttentionImpl : public AttentionCloneable<GroupedQueryAttentionImpl> {
 public:
  explicit GroupedQueryAttentionImpl(GroupedQueryAttentionOptions options);
  GroupedQueryAttentionImpl(int64_t dim, int64_t num_heads, int64_t num_kv_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "GroupedQueryAttention"; }
  int64_t dim() const override { return options.dim(); }

  GroupedQueryAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::nn::Linear gate_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};
  torch::Tensor sinks;

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(GroupedQueryAttention);

}  // namespace attnkit
