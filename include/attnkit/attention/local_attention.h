#pragma once
// Local (sliding-window) self-attention: every query sees the keys within a fixed distance of
// it. attzoo's LocalSelfAttention, with a causal form that decodes with a window-sized cache
// (docs/catalog.md, "Local attention").

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `LocalAttention`.
/// Example:
///   LocalAttention attn(LocalAttentionOptions(/*dim=*/256, /*num_heads=*/4).window_size(64));
struct LocalAttentionOptions {
  LocalAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Window width w: query i sees keys j with |i - j| <= w / 2 (integer division; an even w
  /// gives w + 1 keys, as in attzoo), or i - w / 2 <= j <= i when causal. Default: 128
  TORCH_ARG(int64_t, window_size) = 128;
  /// Only past keys inside the window (and allow decoding). Default: false
  TORCH_ARG(bool, causal) = false;
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

/// Local attention. x: [B, T, dim] -> [B, T, dim].
/// Multi-head softmax attention restricted to the window of `keep_mask(T)`. The window is passed
/// to functional::dot_product_attention as window_left / window_right (and causal), so the
/// fused engine can skip the key blocks outside it.
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attzoo's w_q, w_k, w_v, w_o; there
/// are no public attzoo checkpoints, so the library-wide names are used), PyTorch's default
/// Linear initialisation (attzoo re-initialises xavier-uniform).
/// forward(x, attn_mask) combines a per-call mask with the window: a bool mask (true = attend)
/// is AND-ed, a float mask is added to the logits.
/// Decoding (causal only): caches the last window_size / 2 keys and values [B, H, w/2, hd], so
/// the state does not grow with the sequence.
/// Deviations from attzoo: dropout defaults to 0 (attzoo: 0.1 on the returned weights); a float
/// attn_mask is additive (attzoo reads it with mask.bool(), so 0.0 blocks and -inf keeps); a
/// query that sees no key gives zeros (attzoo: NaN).
class LocalAttentionImpl : public AttentionCloneable<LocalAttentionImpl> {
 public:
  explicit LocalAttentionImpl(LocalAttentionOptions options);
  LocalAttentionImpl(int64_t dim, int64_t num_heads);

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
  std::string mechanism() const override { return "LocalAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// The window pattern: Bool [seq_len, seq_len] on the CPU, true where query i sees key j.
  torch::Tensor keep_mask(int64_t seq_len) const;

  LocalAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(LocalAttention);

}  // namespace attnkit
