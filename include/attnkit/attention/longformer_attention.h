#pragma once
// Longformer self-attention (Beltagy et al., 2020): a symmetric sliding window plus global
// tokens that attend to, and are attended by, every position. attzoo's
// LongformerSelfAttention (docs/catalog.md, "Longformer attention").

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

#include <vector>

namespace attnkit {

/// Options for `LongformerAttention`.
/// Example:
///   LongformerAttention attn(LongformerAttentionOptions(/*dim=*/256, /*num_heads=*/4)
///       .window_size(64).global_positions({0}));
struct LongformerAttentionOptions {
  LongformerAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Window width w: query i sees keys j with |i - j| <= w / 2 (integer division). Default: 512
  TORCH_ARG(int64_t, window_size) = 512;
  /// Positions that are global on every call (a [CLS] token: {0}); positions at or beyond the
  /// sequence length of a call are ignored. Per-call globals come from forward_global.
  /// Default: {}
  TORCH_ARG(std::vector<int64_t>, global_positions) = {};
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

/// Longformer attention. x: [B, T, dim] -> [B, T, dim].
/// Query i sees key j iff |i - j| <= window_size / 2, or i is global, or j is global (a global
/// row sees everything, a global column is seen by everyone); then multi-head softmax attention
/// with that bool keep mask. The global tokens are the union of options.global_positions and
/// the per-call global_mask of forward_global (Bool [T] or [B, T], true = global).
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attzoo's w_q, w_k, w_v, w_o; no
/// public attzoo checkpoints exist, so the library-wide names are used). Global tokens use the
/// same projections (the paper's separate global projections are not modelled, as in attzoo).
/// attn_mask (forward(x, attn_mask) or forward_global): a bool mask (true = attend) is AND-ed
/// with the pattern, a float mask is added to the logits. Non-causal, so no decoding; a causal
/// bool attn_mask restricts it to the past.
/// Deviations from attzoo: dropout defaults to 0 (attzoo: 0.1 on the weights); a query that
/// sees no key gives zeros (attzoo: NaN); the global mask must be bool (attzoo calls .bool()).
class LongformerAttentionImpl : public AttentionCloneable<LongformerAttentionImpl> {
 public:
  explicit LongformerAttentionImpl(LongformerAttentionOptions options);
  LongformerAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  /// global_mask: Bool [T] or [B, T], true = global token (in addition to
  /// options.global_positions); attn_mask as in forward(x, attn_mask), undefined for none.
  torch::Tensor forward_global(const torch::Tensor& x,
                               const torch::Tensor& global_mask,
                               const torch::Tensor& attn_mask = {});
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  /// forward_global with the attention weights [B, H, T, T].
  AttentionOutput forward_with_aux_global(const torch::Tensor& x,
                                          const torch::Tensor& global_mask,
                                          const torch::Tensor& attn_mask = {});
  std::string mechanism() const override { return "LongformerAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// The pattern with only options.global_positions: Bool [seq_len, seq_len] on the CPU.
  torch::Tensor keep_mask(int64_t seq_len) const;

  LongformerAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& global_mask,
                      const torch::Tensor& attn_mask,
                      bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(LongformerAttention);

}  // namespace attnkit
