#pragma once
// Multi-head scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need").

#include <attnkit/attention/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `StandardAttention`.
/// Example:
///   StandardAttention attn(StandardAttentionOptions(/*dim=*/512, /*num_heads=*/8).causal(true));
struct StandardAttentionOptions {
  StandardAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Mask future keys (and allow decoding). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Dropout on the attention weights in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
};

/// Multi-head attention (Vaswani et al., 2017): every head has its own keys and values. x: [B, T, dim] -> [B, T, dim].
/// Parameters (Llama-style names, so it shares weights with GroupedQueryAttention):
/// q_proj [dim, dim], k_proj and v_proj [H*hd, dim], o_proj [dim, dim].
class StandardAttentionImpl : public torch::nn::Cloneable<StandardAttentionImpl>, public AttentionImpl {
 public:
  explicit StandardAttentionImpl(StandardAttentionOptions options);
  StandardAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  AttentionOutput forward_with_aux(const torch::Tensor& x) override;
  std::string mechanism() const override { return "StandardAttention"; }
  int64_t dim() const override { return options.dim(); }

  StandardAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
};
ATTNKIT_ATTENTION_MODULE(StandardAttention);

}  // namespace attnkit
