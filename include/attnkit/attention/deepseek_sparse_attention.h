#pragma once
// DeepSeek sparse attention (DeepSeek-AI, 2025, "DeepSeek-V3.2-Exp"), as attnhut ports it: a
// cheap "lightning" indexer scores every (query, key) pair, each query keeps its top_k keys, and
// the main multi-head attention runs over those keys only. The indexer is trained by a separate
// distillation loss (`dsa_index_aux_loss`), since the top-k selection passes no gradient.
// See docs/catalog.md, "DeepSeek sparse attention".

#include <attnkit/attention/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `LightningIndexer`.
/// Example:
///   LightningIndexer indexer(LightningIndexerOptions(512).num_heads(4).head_dim(64));
struct LightningIndexerOptions {
  /* implicit */ LightningIndexerOptions(int64_t dim);
  /// Model width of the input. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of indexer query heads. Default: 4
  TORCH_ARG(int64_t, num_heads) = 4;
  /// Width of an indexer head (queries and the one shared key). Default: 64
  TORCH_ARG(int64_t, head_dim) = 64;
  /// Bias on wq, wk and ww. Default: false
  TORCH_ARG(bool, bias) = false;
};

/// The lightning indexer: I[t, s] = sum_h w[t, h] * ReLU(q[t, h] . k[s]), with no scale, one
/// shared key head and no softmax.
/// x: [B, T, dim] -> scores [B, T, T] (unmasked).
/// Parameters: wq [Hi*di, dim], wk [di, dim], ww [Hi, dim] (+ biases).
/// Example:
///   LightningIndexer indexer(512);
///   torch::Tensor scores = indexer(x);   // [B, T, T]
class LightningIndexerImpl : public torch::nn::Cloneable<LightningIndexerImpl> {
 public:
  explicit LightningIndexerImpl(LightningIndexerOptions options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// x: [B, T, dim] -> [B, T, T]
  torch::Tensor forward(const torch::Tensor& x);
  /// Query side of x: q [B, T, Hi, di] and head weights w [B, T, Hi].
  std::pair<torch::Tensor, torch::Tensor> queries(const torch::Tensor& x);
  /// Key side of x: k [B, T, di].
  torch::Tensor keys(const torch::Tensor& x);
  /// Scores of queries (q [B, Tq, Hi, di], w [B, Tq, Hi]) against keys [B, Tk, di]: [B, Tq, Tk].
  static torch::Tensor score(const torch::Tensor& q,
                             const torch::Tensor& w,
                             const torch::Tensor& k);

  LightningIndexerOptions options;
  /// Queries [Hi*di, dim], the shared key [di, dim] and the per-head weights [Hi, dim].
  torch::nn::Linear wq{nullptr}, wk{nullptr}, ww{nullptr};
};
TORCH_MODULE(LightningIndexer);

/// Options for `DeepSeekSparseAttention`.
/// Example:
///   DeepSeekSparseAttention attn(DeepSeekSparseAttentionOptions(512, 8).top_k(128));
struct DeepSeekSparseAttentionOptions {
  DeepSeekSparseAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of attention heads (head width dim / num_heads). Required.
  TORCH_ARG(int64_t, num_heads);
  /// Keys kept per query (all visible keys when fewer). Default: 64
  TORCH_ARG(int64_t, top_k) = 64;
  /// Number of indexer heads. Default: 4
  TORCH_ARG(int64_t, num_index_heads) = 4;
  /// Width of an indexer head. Default: 64
  TORCH_ARG(int64_t, index_head_dim) = 64;
  /// Mask future keys, for the selection and the attention (and allow decoding). Default: true
  TORCH_ARG(bool, causal) = true;
  /// Bias on qkv, proj and the indexer projections. Default: false
  TORCH_ARG(bool, bias) = false;
  /// Feed the indexer x.detach(), so `dsa_index_aux_loss` trains the indexer without reaching
  /// the layers below (DeepSeek-V3.2's setup; attnhut does not detach). Default: false
  TORCH_ARG(bool, detach_index) = false;
};

/// What `DeepSeekSparseAttention::forward_with_aux_sparse` returns.
struct DeepSeekSparseOutput : AttentionOutput {
  /// Indexer scores [B, T, Tk], -inf where a key is invisible (future or masked).
  torch::Tensor index_scores;
  /// Keys each query attends to: bool [B, T, Tk].
  torch::Tensor selected;
  /// The same selection as key indices [B, T, K] (int64, K = min(top_k, Tk)), -1 for the
  /// slots of a query that sees fewer than K keys: what a gather kernel consumes.
  torch::Tensor selected_indices;
};

/// DeepSeek sparse attention. x: [B, T, dim] -> [B, T, dim].
/// Parameters (attnhut names): qkv [3*dim, dim] (rows [q | k | v], heads contiguous),
/// proj [dim, dim], indexer.{wq, wk, ww}.
/// Per query t the indexer scores the visible keys (s <= t when causal, and the attn_mask),
/// the top_k of them are kept (ties go to the earlier key, so decoding selects exactly what the
/// full forward selects), and every head attends to the kept keys with scale head_dim^-1/2.
/// When causal each query keeps exactly min(top_k, t + 1) keys; a query that sees no key gives
/// zeros. The attention runs as functional::dot_product_attention with a bool mask
/// [B, 1, T, Tk]; the selection is also built as indices [B, T, K] for a gather kernel.
/// Deviations from attnhut: masked logits are -inf (not a finite minimum), per-call attn_masks
/// are accepted ([T, T], [B, T, T] or [B, 1, T, T]; masked keys are never selected).
/// Decoding caches "k", "v" [B, H, Tk, hd] and the indexer keys "index_k" [B, Tk, di]; each new
/// query selects over every cached key.
/// Example:
///   DeepSeekSparseAttention attn(DeepSeekSparseAttentionOptions(256, 4).top_k(32));
///   auto aux = attn->forward_with_aux_sparse(x);
///   torch::Tensor loss = lm_loss(aux.output) + dsa_index_aux_loss(aux.index_scores,
///   aux.attn_weights);
class DeepSeekSparseAttentionImpl : public AttentionCloneable<DeepSeekSparseAttentionImpl> {
 public:
  explicit DeepSeekSparseAttentionImpl(DeepSeekSparseAttentionOptions options);
  DeepSeekSparseAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  /// The output and the attention weights [B, H, T, T] (zero outside the selection).
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  /// The output, the attention weights, the index scores and the selection.
  DeepSeekSparseOutput forward_with_aux_sparse(const torch::Tensor& x,
                                               const torch::Tensor& attn_mask = {});
  std::string mechanism() const override { return "DeepSeekSparseAttention"; }
  int64_t dim() const override { return options.dim(); }

  DeepSeekSparseAttentionOptions options;
  /// The fused q/k/v projection [3*dim, dim] and the output projection [dim, dim].
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  /// Scores the keys; trained only by dsa_index_aux_loss.
  LightningIndexer indexer{nullptr};

 private:
  DeepSeekSparseOutput run(const torch::Tensor& x,
                           const torch::Tensor& attn_mask,
                           DecodeState* state,
                           bool need_aux);
};
ATTNKIT_ATTENTION_MODULE(DeepSeekSparseAttention);

/// Distillation loss of the indexer: the target is the attention mass per key summed over heads
/// (detached), masked where index_scores is -inf and renormalised per query; the loss is
/// mean over (b, t) of -sum_s target[s] * log_softmax(index_scores)[s], in float (double for
/// double inputs). Queries whose target has no mass contribute 0.
/// Deviation from attnhut: attnhut returns inf when the target has mass on a key whose score
/// is masked; here that mass is dropped and the rest renormalised, so the loss stays finite.
///   index_scores: [B, T, Tk] (-inf = masked), attn_weights: [B, H, T, Tk] -> scalar
torch::Tensor dsa_index_aux_loss(const torch::Tensor& index_scores,
                                 const torch::Tensor& attn_weights);

}  // namespace attnkit
