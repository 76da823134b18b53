#pragma once
// Differential attention (Ye et al., 2024, "Differential Transformer"): each head subtracts a
// second softmax map, scaled by a learned lambda, from the first, so common-mode attention noise
// cancels. attnhut's DifferentialAttention (docs/catalog.md, "Differential attention").

#include <attnkit/attention/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// lambda_init(depth) = 0.8 - 0.6 * exp(-0.3 * depth): the starting lambda of the layer at
/// zero-based index `depth`, in [0.2, 0.8) and increasing with depth.
/// Example:
///   double l = lambda_init(/*depth=*/3);   // 0.8 - 0.6 * exp(-0.9)
double lambda_init(int64_t depth);

/// Options for `DifferentialAttention`.
/// Example:
///   DifferentialAttention attn(DifferentialAttentionOptions(/*dim=*/512,
///   /*num_heads=*/8).depth(3));
struct DifferentialAttentionOptions {
  DifferentialAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output; must be divisible by 2 * num_heads. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of differential heads; each has two query/key sub-heads of width
  /// dim / (2 * num_heads) and one value head of width dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Zero-based index of the layer in its stack; sets lambda_init(depth). Default: 0
  TORCH_ARG(int64_t, depth) = 0;
  /// Mask future keys (and allow decoding). Default: true
  TORCH_ARG(bool, causal) = true;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
};

/// Differential attention. x: [B, T, dim] -> [B, T, dim].
/// With hd = dim / (2H), q and k are split into 2H sub-heads of width hd and v into H heads of
/// width 2hd. Head i combines the softmax maps of sub-heads 2i and 2i+1:
///   A_s = softmax(q_s k_s^T / sqrt(hd)),  lambda = exp(sum(lambda_q1 * lambda_k1))
///         - exp(sum(lambda_q2 * lambda_k2)) + lambda_init  (one scalar for all heads),
///   o_i = rms_norm((A_2i - lambda * A_2i+1) v_i, head_norm, eps 1e-5) * (1 - lambda_init),
/// then the heads are merged and projected by o_proj. No RoPE (as attnhut).
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attnhut's q, k, v, proj renamed to
/// the library's Llama-style names), head_norm [2hd] (ones), lambda_q1, lambda_k1, lambda_q2,
/// lambda_k2 [hd] (~ N(0, 0.1)).
/// Deviations from attnhut: masked logits are -inf rather than a finite minimum, so a fully
/// masked query row (only possible with a user attn_mask) gives zeros; forward(x, attn_mask) and
/// decoding (cache: k [B, 2H, T, hd], v [B, H, T, 2hd]) are additions. forward_with_aux returns
/// the differential map A_2i - lambda * A_2i+1 as attn_weights [B, H, T, T]: its rows sum to
/// 1 - lambda, not 1, and it can be negative.
class DifferentialAttentionImpl : public AttentionCloneable<DifferentialAttentionImpl> {
 public:
  explicit DifferentialAttentionImpl(DifferentialAttentionOptions options);
  DifferentialAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  /// attn_mask as in AttentionImpl; a [B, H, T, T] mask applies to both sub-heads of a head.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "DifferentialAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// The current scalar lambda (a 0-d tensor, differentiable in the four lambda vectors).
  torch::Tensor lambda() const;
  /// lambda_init(options.depth()).
  double lambda_init_value() const { return lambda_init(options.depth()); }

  DifferentialAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::Tensor head_norm;
  torch::Tensor lambda_q1, lambda_k1, lambda_q2, lambda_k2;

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
};
ATTNKIT_ATTENTION_MODULE(DifferentialAttention);

}  // namespace attnkit
