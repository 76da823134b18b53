#pragma once
// MiniMax-style block-sparse attention, as attnhut implements it: a small index branch scores
// every (query, key) pair per KV group, each query keeps the top_k key blocks by their best token
// score (plus its own block), and grouped-query attention runs over the kept blocks. The index
// branch is trained by a KL distillation loss (`msa_index_aux_loss`).
// See docs/catalog.md, "MiniMax sparse attention".

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `MiniMaxSparseAttention`. The defaults are attnhut 0.5.0; attnhut 0.4.0 is
/// `.block_size(64).top_k(8).qk_norm(false).detach_index(false).partial_rope(false)`.
/// Example:
///   MiniMaxSparseAttention attn(MiniMaxSparseAttentionOptions(512, 8, 2).block_size(64).top_k(8));
struct MiniMaxSparseAttentionOptions {
  MiniMaxSparseAttentionOptions(int64_t dim, int64_t num_heads, int64_t num_kv_groups);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query heads (head width dim / num_heads). Required.
  TORCH_ARG(int64_t, num_heads);
  /// Number of key/value heads (= index groups); query head h reads group
  /// h / (num_heads / num_kv_groups). Required.
  TORCH_ARG(int64_t, num_kv_groups);
  /// Tokens per key block. Default: 128
  TORCH_ARG(int64_t, block_size) = 128;
  /// Key blocks kept per query and group (all blocks when fewer). Default: 16
  TORCH_ARG(int64_t, top_k) = 16;
  /// Width of the index queries and the shared index key. 0 means the head width. Default: 0
  TORCH_ARG(int64_t, index_dim) = 0;
  /// Rotated channels (the first ones) of q, k and the index queries/key when partial_rope;
  /// 0 means min(head width, index_dim); must stay 0 with partial_rope(false). Default: 0
  TORCH_ARG(int64_t, rope_dim) = 0;
  /// Rotate only the first rope_dim channels (0.5.0); false rotates every channel of the main
  /// heads and of the index heads (0.4.0). Default: true
  TORCH_ARG(bool, partial_rope) = true;
  /// Mask future keys and blocks (and allow decoding). Default: true
  TORCH_ARG(bool, causal) = true;
  /// Rotary embedding (rotate-half) on q, k and the index queries/key. Default: true
  TORCH_ARG(bool, use_rope) = true;
  /// Base of the rotary inverse frequencies. Default: 10000
  TORCH_ARG(double, rope_theta) = 10000.0;
  /// Always keep the block that holds the query. Default: true
  TORCH_ARG(bool, force_current_block) = true;
  /// Bias on the q, k, v, idx_q, idx_k and proj projections. Default: false
  TORCH_ARG(bool, bias) = false;
  /// RMSNorm on q, k (per head) and on the index queries and key (0.5.0). Default: true
  TORCH_ARG(bool, qk_norm) = true;
  /// Epsilon of the QK norms. Default: 1e-6
  TORCH_ARG(double, qk_norm_eps) = 1e-6;
  /// Feed the index branch x.detach(), so only msa_index_aux_loss trains it and that loss does
  /// not reach the layers below (0.5.0). Default: true
  TORCH_ARG(bool, detach_index) = true;
};

/// What `MiniMaxSparseAttention::forward_with_aux_sparse` returns.
struct MiniMaxSparseOutput : AttentionOutput {
  /// Token index scores qi . ki * index_dim^-1/2 [B, Gk, T, Tk], float (double for double
  /// inputs), -inf where a key is invisible (future or masked).
  torch::Tensor index_scores;
  /// Block scores [B, Gk, T, nb]: the best visible token score of each key block (-inf if none).
  torch::Tensor block_scores;
  /// Kept key blocks: bool [B, Gk, T, nb] (nb = ceil(Tk / block_size)); what a block-sparse
  /// kernel consumes.
  torch::Tensor selected_blocks;
  /// Keys each query of each group attends to: bool [B, Gk, T, Tk].
  torch::Tensor keep;
};

/// MiniMax sparse attention. x: [B, T, dim] -> [B, T, dim].
/// Parameters (attnhut names): q [dim, dim], k, v [Gk*hd, dim], idx_q [Gk*di, dim],
/// idx_k [di, dim], proj [dim, dim] (+ biases), and with qk_norm the raw weights q_norm,
/// k_norm [hd], idx_q_norm, idx_k_norm [di] (ones).
/// Per group g and query t: index scores s[t, j] = qi[g, t] . ki[j] * di^-1/2 over the visible
/// keys; block score = max over the block's tokens; keep the top max(1, min(top_k, nb)) blocks,
/// drop blocks that start after t (causal), add block t / block_size (force_current_block);
/// the token keep mask is those blocks AND visible. Head h attends with its group's keep,
/// scale hd^-1/2, through functional::dot_product_attention; a query that sees no key gives 0.
/// Equal block scores keep the earlier block, so decoding selects what the full forward selects.
/// Deviations from attnhut: masked logits are -inf (not a finite minimum); per-call attn_masks
/// are accepted ([T, T], [B, T, T] or [B, 1, T, T]; masked keys neither score nor attend).
/// attnhut 0.4.0's block-level loss is msa_index_aux_loss_v040, over block_scores.
/// Decoding caches "k", "v" [B, Gk, Tk, hd] (after norm and rope) and "index_k" [B, Tk, di].
/// Example:
///   MiniMaxSparseAttention attn(MiniMaxSparseAttentionOptions(256, 8, 2).block_size(32).top_k(4));
///   auto aux = attn->forward_with_aux_sparse(x);
///   torch::Tensor kl = msa_index_aux_loss(aux.index_scores, aux.attn_weights, aux.keep);
class MiniMaxSparseAttentionImpl : public AttentionCloneable<MiniMaxSparseAttentionImpl> {
 public:
  explicit MiniMaxSparseAttentionImpl(MiniMaxSparseAttentionOptions options);
  MiniMaxSparseAttentionImpl(int64_t dim, int64_t num_heads, int64_t num_kv_groups);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  /// The output and the attention weights [B, H, T, T] (zero outside the kept keys).
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  /// The output, the attention weights, the index and block scores and the selection.
  MiniMaxSparseOutput forward_with_aux_sparse(const torch::Tensor& x,
                                              const torch::Tensor& attn_mask = {});
  std::string mechanism() const override { return "MiniMaxSparseAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// Options with index_dim and rope_dim resolved.
  MiniMaxSparseAttentionOptions options;
  /// Main projections: q [dim, dim], k and v [Gk*hd, dim].
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr};
  /// Index branch: queries [Gk*di, dim] and the shared key [di, dim]; trained only by
  /// msa_index_aux_loss.
  torch::nn::Linear idx_q{nullptr}, idx_k{nullptr};
  /// Output projection [dim, dim].
  torch::nn::Linear proj{nullptr};
  /// QK-norm weights [hd], [hd], [di], [di] (ones); undefined without qk_norm.
  torch::Tensor q_norm, k_norm, idx_q_norm, idx_k_norm;

 private:
  MiniMaxSparseOutput run(const torch::Tensor& x,
                          const torch::Tensor& attn_mask,
                          DecodeState* state,
                          bool need_aux);
  std::optional<RotaryEmbedding> rope_, index_rope_;
};
ATTNKIT_ATTENTION_MODULE(MiniMaxSparseAttention);

/// KL distillation loss of the index branch (attnhut 0.5.0). teacher = attn_weights (detached)
/// averaged over the heads of each group, restricted to `keep` and renormalised per query;
/// student = log_softmax(index_scores with -inf outside keep); loss =
/// mean over (b, g, t) of sum_s teacher * (log(max(teacher, eps)) - student), with the terms
/// where teacher <= 0 set to 0. The result is >= 0 and only reaches index_scores. Computed in
/// float (double for double inputs); queries with no kept key contribute 0.
/// Deviation from attnhut: attnhut does not restrict the teacher to keep (with a foreign keep
/// it could return inf); for the module's own outputs both agree.
///   index_scores: [B, Gk, T, Tk], attn_weights: [B, H, T, Tk], keep: bool [B, Gk, T, Tk]
torch::Tensor msa_index_aux_loss(const torch::Tensor& index_scores,
                                 const torch::Tensor& attn_weights,
                                 const torch::Tensor& keep,
                                 double eps = 1e-9);

/// Block-level index loss (attnhut 0.4.0's msa_index_aux_loss): a cross entropy that fits the
/// index branch's block scores to the attention mass each key block actually received.
/// With nb = block_scores.size(-1) and G = H / group_size groups of consecutive heads:
///   mass[b, h, t, n] = sum of attn_weights[b, h, t, s] (detached) over the keys s of block n,
///     s in [n * block_size, (n + 1) * block_size) (keys past Tk count as 0);
///   teacher[b, g, t, n] = mean of mass over the group_size heads of group g, divided by its
///     sum over n (floored at eps);
///   loss = mean over (b, g, t) of -sum_n teacher * log_softmax_n(block_scores), where blocks
///     with teacher 0 contribute 0 (so -inf scores of invisible blocks are fine).
/// Only block_scores get a gradient. Computed in float (double for double block_scores).
///   block_scores: [B, G, T, nb] (MiniMaxSparseOutput::block_scores), attn_weights:
///   [B, H, T, Tk] with H = G * group_size and Tk <= nb * block_size.
torch::Tensor msa_index_aux_loss_v040(const torch::Tensor& block_scores,
                                      const torch::Tensor& attn_weights,
                                      int64_t block_size,
                                      int64_t group_size,
                                      double eps = 1e-9);

}  // namespace attnkit
