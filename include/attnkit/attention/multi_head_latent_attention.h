#pragma once
// Multi-head latent attention (DeepSeek-AI, 2024, "DeepSeek-V2"): keys and values are rebuilt
// from a small per-token latent, and one decoupled RoPE key is shared by all heads, so the
// decode cache holds only kv_lora_rank + qk_rope_head_dim numbers per token.

#include <attnkit/attention/attention.h>
#include <attnkit/core/rms_norm.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `MultiHeadLatentAttention`. Widths left at 0 take attnhut's defaults; q_lora_rank
/// unset means a direct q_proj (as d9d; attnhut uses a dim / 2 bottleneck, docs/catalog.md).
/// Example:
///   MultiHeadLatentAttention attn(MultiHeadLatentAttentionOptions(512, 8)
///       .q_lora_rank(192).kv_lora_rank(64).qk_nope_head_dim(32).qk_rope_head_dim(16));
struct MultiHeadLatentAttentionOptions {
  MultiHeadLatentAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Rank of the query bottleneck (q_a_proj, q_a_layernorm, q_b_proj); unset means a direct
  /// q_proj. Default: nullopt
  TORCH_ARG(std::optional<int64_t>, q_lora_rank) = std::nullopt;
  /// Rank of the shared key/value latent. 0 means dim / 4. Default: 0
  TORCH_ARG(int64_t, kv_lora_rank) = 0;
  /// Per-head query/key channels without position. 0 means (dim / num_heads) / 2. Default: 0
  TORCH_ARG(int64_t, qk_nope_head_dim) = 0;
  /// Per-head query channels and shared key channels with RoPE (even). 0 means
  /// (dim / num_heads) / 2. Default: 0
  TORCH_ARG(int64_t, qk_rope_head_dim) = 0;
  /// Per-head value width. 0 means dim / num_heads. Default: 0
  TORCH_ARG(int64_t, v_head_dim) = 0;
  /// Epsilon of the RMSNorms on the latents. Default: 1e-6
  TORCH_ARG(double, norm_eps) = 1e-6;
  /// Mask future keys (and allow decoding). Default: true
  TORCH_ARG(bool, causal) = true;
  /// Dropout on the attention weights in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Bias on every projection: q_a_proj and q_b_proj (or q_proj), kv_a_proj_with_mqa, kv_b_proj
  /// and o_proj, as attnhut's bias=True (the RMSNorms have none). Default: false
  TORCH_ARG(bool, bias) = false;
  /// Rotary embedding of the rope channels; its dim is always qk_rope_head_dim. DeepSeek
  /// checkpoints pair channels interleaved. Default: RopeOptions().style(RopeStyle::kInterleaved)
  TORCH_ARG(RopeOptions, rope) = RopeOptions().style(RopeStyle::kInterleaved);
};

/// Multi-head latent attention. x: [B, T, dim] -> [B, T, dim].
/// Parameters (DeepSeek-V2/V3 checkpoint names): q_a_proj [q_lora, dim], q_a_layernorm [q_lora],
/// q_b_proj [H*(nope+rope), q_lora] (or q_proj [H*(nope+rope), dim]); kv_a_proj_with_mqa
/// [kv_lora+rope, dim], kv_a_layernorm [kv_lora], kv_b_proj [H*(nope+v), kv_lora],
/// o_proj [dim, H*v], each with a bias under bias(true). Per head the query is [nope | rope],
/// kv_b_proj's rows are [k_nope | v], kv_a_proj_with_mqa's rows are [latent | rope key].
/// Scale (nope + rope)^-1/2.
/// Decoding caches the normalised latent and the rotated rope key and attends in latent space
/// (kv_b_proj absorbed into the query and the output), never rebuilding per-head keys. With
/// bias(true), kv_b_proj's key bias adds q_nope . b_k to every logit of a query alike, which the
/// softmax cancels, and its value bias adds b_v times the query's weight sum.
class MultiHeadLatentAttentionImpl : public AttentionCloneable<MultiHeadLatentAttentionImpl> {
 public:
  explicit MultiHeadLatentAttentionImpl(MultiHeadLatentAttentionOptions options);
  MultiHeadLatentAttentionImpl(int64_t dim, int64_t num_heads);

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
  std::string mechanism() const override { return "MultiHeadLatentAttention"; }
  int64_t dim() const override { return options.dim(); }

  MultiHeadLatentAttentionOptions options;
  torch::nn::Linear q_a_proj{nullptr}, q_b_proj{nullptr}, q_proj{nullptr};
  RMSNorm q_a_layernorm{nullptr};
  torch::nn::Linear kv_a_proj_with_mqa{nullptr}, kv_b_proj{nullptr}, o_proj{nullptr};
  RMSNorm kv_a_layernorm{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(MultiHeadLatentAttention);

}  // namespace attnkit
