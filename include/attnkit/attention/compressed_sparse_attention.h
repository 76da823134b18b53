#pragma once
// Compressed sparse attention (DeepSeek-AI, 2026, "DeepSeek-V4", CSA): light, overlapped
// compression of the keys/values (each entry pools its own block and the previous one), then a
// lightning indexer picks the top-k compressed entries per query; the selected entries plus a
// short raw window go through HCA's shared-KV core with a sink and the grouped output projection.

#include <attnkit/attention/attention.h>
#include <attnkit/attention/heavily_compressed_attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `CompressedSparseAttention`. Widths left at 0 take attnhut's defaults.
/// Example:
///   CompressedSparseAttention attn(CompressedSparseAttentionOptions(512, 8)
///       .compression_rate(4).top_k(16).window(64));
struct CompressedSparseAttentionOptions {
  CompressedSparseAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query heads (all read the one shared KV head). Required.
  TORCH_ARG(int64_t, num_heads);
  /// Tokens per block (r); entry e pools blocks e - 1 and e. Default: 4
  TORCH_ARG(int64_t, compression_rate) = 4;
  /// Compressed entries selected per query (at most; fewer when fewer are visible). Default: 16
  TORCH_ARG(int64_t, top_k) = 16;
  /// Width c of a KV entry and of a query head. 0 means dim / num_heads. Default: 0
  TORCH_ARG(int64_t, kv_dim) = 0;
  /// Width of the query latent (q_down), also the indexer's query input. 0 means dim / 2.
  /// Default: 0
  TORCH_ARG(int64_t, q_lora_rank) = 0;
  /// Heads of the lightning indexer. Default: 4
  TORCH_ARG(int64_t, num_index_heads) = 4;
  /// Width of one indexer head. Default: 64
  TORCH_ARG(int64_t, index_dim) = 64;
  /// Head groups of the output projection; must divide num_heads. 0 means num_heads. Default: 0
  TORCH_ARG(int64_t, num_groups) = 0;
  /// Raw (uncompressed) tokens each query sees: s with t - window < s <= t. Default: 64
  TORCH_ARG(int64_t, window) = 64;
  /// Bias on every linear (kv_a, kv_b, z_a, z_b, q_down, q_up, idx_*, proj.out). Default: false
  TORCH_ARG(bool, bias) = false;
  /// Epsilon of the q and kv RMSNorms. Default: 1e-6
  TORCH_ARG(double, norm_eps) = 1e-6;
  /// Partial RoPE on queries and KV entries, as in HeavilyCompressedAttentionOptions::rope (the
  /// indexer stays position-free); unset means none, as in attnhut. Default: nullopt
  TORCH_ARG(std::optional<RopeOptions>, rope) = std::nullopt;
};

/// What `forward_with_aux_sparse` returns: the output, the attention weights, and the indexer.
struct CompressedSparseOutput : AttentionOutput {
  /// Lightning-indexer scores [B, T, nb] over the compressed entries (nb = ceil(T / r)); -inf
  /// where the entry is not visible to the query ((e + 1) r > t).
  torch::Tensor index_scores;
  /// Bool [B, T, nb]: the entries each query attends to (at most top_k, all visible).
  torch::Tensor selected;
};

/// Compressed sparse attention (docs/catalog.md, "Compressed sparse attention").
/// x: [B, T, dim] -> [B, T, dim]. Always causal.
/// With c = kv_dim, r = compression_rate:
///   comp[e]  = per channel softmax over 2r positions of [z_a(x)[block e] + bias_a ;
///              z_b(x)[block e-1] + bias_b] applied to [kv_a(x)[block e] ; kv_b(x)[block e-1]]
///              (entry 0's previous half is empty);
///   kv_set   = rms_norm([comp ; kv_a(x)], kv_norm),  c_q = q_down(x),
///   q        = rms_norm(q_up(c_q) per head, q_norm);
///   score[t, e] = sum_h idx_w(x)[t, h] * relu(idx_q(c_q)[t, h] . idx_k(comp[e]));
///   selected = top min(top_k, nb) scores of the visible entries ((e + 1) r <= t), ties going
///              to the earlier entry;
///   keys = values = selected entries + raw tokens t - window < s <= t, one softmax with the
///   sink per head (scale c^-1/2), then proj (GroupedOutputProjection).
/// Parameters (attnhut names): kv_a, kv_b, z_a, z_b [c, dim], bias_a, bias_b [r, c] (zeros),
/// q_down [q_lora, dim], q_up [H*c, q_lora], q_norm, kv_norm [c] (ones), sink [H] (zeros),
/// idx_q [Hi*di, q_lora], idx_k [di, c], idx_w [Hi, dim], proj.w, proj.out.
/// The indexer gets no gradient through the top-k selection (as in attnhut and DeepSeek, it is
/// trained by an auxiliary loss on index_scores).
/// Deviations from attnhut: invisible index scores and masked logits are -inf, not finite
/// `neg` (top-k then never prefers an invisible entry, and a row that sees nothing gives zeros).
/// attn_mask (bool keep [T, T] / [B, T, T] / [B, 1, T, T], over raw positions, one for all
/// heads) narrows what each query sees on top of the rules above: raw token s stays visible to
/// t only if keep[t, s]; entry e (which pools the tokens of blocks e - 1 and e) stays visible,
/// and selectable by the indexer, only if keep[t, s] holds for every token s it pools. So a
/// hidden token reaches t by no route, and causality stays exact. Additive (float) masks raise.
/// Execution: with the fused backend (fp32/bf16 on CPU, no attention weights) each query
/// gathers its selected entries and its window from [entries ; raw KV] (gather kernel, sink in
/// the kernel, O(T (top_k + window) c)), and the indexer selects by chunks of queries; the
/// masked dense form over [entries ; raw tokens] runs for forward_with_aux and under
/// ATTNKIT_BACKEND=reference. Both select the same entries.
/// Decoding caches the normalised entries and their indexer keys, the raw rows of the
/// incomplete block and the kv_b/z_b rows of the last complete block, and a ring of the last
/// `window` raw KV rows; an entry appears when its block completes.
/// forward_with_aux: attn_weights [B, H, T, nb + T] over [entries ; raw tokens].
class CompressedSparseAttentionImpl : public AttentionCloneable<CompressedSparseAttentionImpl> {
 public:
  explicit CompressedSparseAttentionImpl(CompressedSparseAttentionOptions options);
  CompressedSparseAttentionImpl(int64_t dim, int64_t num_heads);

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
  /// The output with the attention weights, index scores and selection (masked dense path),
  /// under an optional attn_mask as in forward(x, attn_mask).
  CompressedSparseOutput forward_with_aux_sparse(const torch::Tensor& x,
                                                 const torch::Tensor& attn_mask = {});
  std::string mechanism() const override { return "CompressedSparseAttention"; }
  int64_t dim() const override { return options.dim(); }

  CompressedSparseAttentionOptions options;
  torch::nn::Linear kv_a{nullptr}, kv_b{nullptr}, z_a{nullptr}, z_b{nullptr};
  torch::nn::Linear q_down{nullptr}, q_up{nullptr};
  torch::nn::Linear idx_q{nullptr}, idx_k{nullptr}, idx_w{nullptr};
  torch::Tensor bias_a, bias_b, q_norm, kv_norm, sink;
  GroupedOutputProjection proj{nullptr};

 private:
  CompressedSparseOutput run(const torch::Tensor& x,
                             const torch::Tensor& attn_mask,
                             DecodeState* state,
                             bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(CompressedSparseAttention);

}  // namespace attnkit
