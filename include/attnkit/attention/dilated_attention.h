#pragma once
// Dilated self-attention: every query sees the keys at a multiple of the dilation rate from it,
// in both directions. attzoo's DilatedSelfAttention (docs/catalog.md, "Dilated attention").

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `DilatedAttention`.
/// Example:
///   DilatedAttention attn(DilatedAttentionOptions(/*dim=*/256, /*num_heads=*/4).dilation_rate(3));
struct DilatedAttentionOptions {
  DilatedAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Dilation r: query i sees key j iff (j - i) is a multiple of r (self included). r = 1 is
  /// full attention. Default: 2
  TORCH_ARG(int64_t, dilation_rate) = 2;
  /// Softmax temperature: logits are q.k / (sqrt(head_dim) * temperature). Default: 1
  TORCH_ARG(double, temperature) = 1.0;
  /// Dropout on the attention weights in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
  /// Rotary embedding on q and k of every head (attzoo's rope=True is
  /// RopeOptions().style(RopeStyle::kInterleaved)); unset means none. Default: nullopt
  TORCH_ARG(std::optional<RopeOptions>, rope) = std::nullopt;
};

/// Dilated attention. x: [B, T, dim] -> [B, T, dim].
/// Multi-head softmax attention restricted to `keep_mask(T)` (a bool keep mask handed to
/// functional::dot_product_attention). Non-causal, so no decoding; pass a causal bool mask to
/// forward(x, attn_mask) to restrict it to the past.
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attzoo's w_q, w_k, w_v, w_o; no
/// public attzoo checkpoints exist, so the library-wide names are used).
/// forward(x, attn_mask): a bool mask (true = attend) is AND-ed with the pattern, a float mask
/// is added to the logits (as in attzoo).
/// Deviations from attzoo: dropout defaults to 0 (attzoo: 0.1 on the returned weights); a
/// query that sees no key gives zeros (attzoo: NaN); num_heads is required (attzoo: 1).
class DilatedAttentionImpl : public AttentionCloneable<DilatedAttentionImpl> {
 public:
  explicit DilatedAttentionImpl(DilatedAttentionOptions options);
  DilatedAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "DilatedAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// The dilation pattern: Bool [seq_len, seq_len] on the CPU, true where (j - i) % r == 0.
  torch::Tensor keep_mask(int64_t seq_len) const;

  DilatedAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x, const torch::Tensor& attn_mask, bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(DilatedAttention);

}  // namespace attnkit
