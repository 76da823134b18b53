#pragma once
// Heavily compressed attention (DeepSeek-AI, 2026, "DeepSeek-V4", HCA): every
// `compression_rate` tokens are pooled into one key/value entry with learned, position-biased
// softmax gates, and each query attends (one shared KV head, keys = values) to every complete
// entry of its past plus a short window of raw tokens, with a learnable per-head sink.
// Also declares GroupedOutputProjection, the output projection HCA and CSA share.

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `GroupedOutputProjection`.
/// Example:
///   GroupedOutputProjection proj(GroupedOutputProjectionOptions(8, 64, 2, 512));
struct GroupedOutputProjectionOptions {
  GroupedOutputProjectionOptions(int64_t num_heads,
                                 int64_t head_dim,
                                 int64_t num_groups,
                                 int64_t dim);
  /// Number of heads feeding the projection. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Width of one head. Required.
  TORCH_ARG(int64_t, head_dim);
  /// Number of head groups; must divide num_heads. Required.
  TORCH_ARG(int64_t, num_groups);
  /// Output model width. Required.
  TORCH_ARG(int64_t, dim);
  /// Width each group is projected to. 0 means head_dim. Default: 0
  TORCH_ARG(int64_t, group_dim) = 0;
  /// Bias on the final `out` linear. Default: false
  TORCH_ARG(bool, bias) = false;
};

/// The grouped output projection of DeepSeek-V4: the heads are split into num_groups groups of
/// (num_heads / num_groups) heads, each group's concatenated heads are multiplied by its own
/// matrix w[g] down to group_dim, and the concatenated groups go through one linear to dim.
/// o: [B, T, num_heads, head_dim] -> [B, T, dim].
/// Parameters: w [num_groups, (num_heads / num_groups) * head_dim, group_dim] (xavier-uniform),
/// out [dim, num_groups * group_dim] (+ bias).
class GroupedOutputProjectionImpl : public torch::nn::Cloneable<GroupedOutputProjectionImpl> {
 public:
  explicit GroupedOutputProjectionImpl(GroupedOutputProjectionOptions options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  /// o: [B, T, num_heads, head_dim] -> [B, T, dim]
  torch::Tensor forward(const torch::Tensor& o);

  GroupedOutputProjectionOptions options;
  torch::Tensor w;
  torch::nn::Linear out{nullptr};
};
TORCH_MODULE(GroupedOutputProjection);

/// Options for `HeavilyCompressedAttention`. Widths left at 0 take attnhut's defaults.
/// Example:
///   HeavilyCompressedAttention attn(HeavilyCompressedAttentionOptions(512, 8)
///       .compression_rate(16).window(64).num_groups(4));
struct HeavilyCompressedAttentionOptions {
  HeavilyCompressedAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query heads (all read the one shared KV head). Required.
  TORCH_ARG(int64_t, num_heads);
  /// Tokens pooled into one compressed entry (r). Default: 16
  TORCH_ARG(int64_t, compression_rate) = 16;
  /// Width c of a KV entry and of a query head. 0 means dim / num_heads. Default: 0
  TORCH_ARG(int64_t, kv_dim) = 0;
  /// Width of the query latent (q_down). 0 means dim / 2. Default: 0
  TORCH_ARG(int64_t, q_lora_rank) = 0;
  /// Head groups of the output projection; must divide num_heads. 0 means num_heads. Default: 0
  TORCH_ARG(int64_t, num_groups) = 0;
  /// Raw (uncompressed) tokens each query sees: s with t - window < s <= t. 0 means only
  /// compressed entries (queries before the first complete block then see nothing: their output
  /// is zero). Default: 64
  TORCH_ARG(int64_t, window) = 64;
  /// Bias on every linear (kv, z, q_down, q_up, proj.out). Default: false
  TORCH_ARG(bool, bias) = false;
  /// Epsilon of the q and kv RMSNorms. Default: 1e-6
  TORCH_ARG(double, norm_eps) = 1e-6;
  /// Partial RoPE on queries and KV entries (DeepSeek-V4 rotates the last 64 channels:
  /// RopeOptions().dim(64).channels(RopeChannels::kLast).style(RopeStyle::kInterleaved)); unset
  /// means none, as in attnhut. Default: nullopt
  TORCH_ARG(std::optional<RopeOptions>, rope) = std::nullopt;
};

/// Heavily compressed attention (docs/catalog.md, "Heavily compressed attention").
/// x: [B, T, dim] -> [B, T, dim]. Always causal.
/// With c = kv_dim, r = compression_rate:
///   comp[e] = sum_{i<r} softmax_i(z(x)[e r + i] + pos_bias[i]) * kv(x)[e r + i]  (per channel)
///   kv_set  = rms_norm([comp ; kv(x)], kv_norm),  q = rms_norm(q_up(q_down(x)) per head, q_norm)
///   query t sees entry e iff (e + 1) r <= t, raw token s iff t - window < s <= t;
///   per head softmax(q . kv_set^T / sqrt(c), plus the sink logit sink[h]) over kv_set (keys =
///   values), then proj (GroupedOutputProjection).
/// Parameters (attnhut names): kv, z [c, dim], pos_bias [r, c] (zeros), q_down [q_lora, dim],
/// q_up [H*c, q_lora], q_norm, kv_norm [c] (ones), sink [H] (zeros), proj.w, proj.out.
/// With `rope`, queries rotate at their position t, raw KV at s, entry e at e*r (the first token
/// it pools), and each head's output is rotated back by position -t (keys are also the values).
/// Deviations from attnhut: masking uses -inf, not finite `neg` (a row that sees nothing gives
/// the zero vector through the sink, or zeros when sink = -inf); the trailing partial block is
/// pooled with -inf gates for its missing tokens, like attnhut, but it is never visible.
/// attn_mask (bool keep [T, T] / [B, T, T] / [B, 1, T, T], over raw positions, one for all
/// heads) narrows what each query sees on top of the rules above: raw token s stays visible to
/// t only if keep[t, s]; entry e (which pools the tokens of block e) stays visible only if
/// keep[t, s] holds for every token s it pools. So a hidden token reaches t by no route, and
/// causality stays exact. Additive (float) masks raise.
/// Decoding caches the normalised compressed entries, a ring of the last `window` raw KV rows
/// and the raw kv/z rows of the incomplete block; an entry appears when its block completes.
/// forward_with_aux: attn_weights [B, H, T, nb + T] over [entries (nb = ceil(T/r)) ; raw tokens].
class HeavilyCompressedAttentionImpl : public AttentionCloneable<HeavilyCompressedAttentionImpl> {
 public:
  explicit HeavilyCompressedAttentionImpl(HeavilyCompressedAttentionOptions options);
  HeavilyCompressedAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  /// attn_mask: bool keep mask [T, T], [B, T, T] or [B, 1, T, T] over raw positions (see the
  /// class comment for what it does to compressed entries).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return true; }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "HeavilyCompressedAttention"; }
  int64_t dim() const override { return options.dim(); }

  HeavilyCompressedAttentionOptions options;
  torch::nn::Linear kv{nullptr}, z{nullptr}, q_down{nullptr}, q_up{nullptr};
  torch::Tensor pos_bias, q_norm, kv_norm, sink;
  GroupedOutputProjection proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(HeavilyCompressedAttention);

}  // namespace attnkit
