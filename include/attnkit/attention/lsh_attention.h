#pragma once
// LSH attention (Kitaev et al., 2020, "Reformer"): tokens are hashed into buckets with random
// rotations (angular LSH) and attend only inside their bucket, over several hash rounds.
// attzoo's LSHSelfAttention, made reproducible (docs/catalog.md, "LSH attention").

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `LSHAttention`.
/// Example:
///   LSHAttention attn(LSHAttentionOptions(/*dim=*/256, /*num_heads=*/4)
///       .bucket_size(32).num_hashes(4).seed(7));
struct LSHAttentionOptions {
  LSHAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Target tokens per bucket: a call with T tokens uses n_b = max(1, ceil(T / bucket_size))
  /// buckets. Default: 64
  TORCH_ARG(int64_t, bucket_size) = 64;
  /// Hash rounds; outputs and weights are averaged over rounds. Default: 1
  TORCH_ARG(int64_t, num_hashes) = 1;
  /// Seed of the CPU generator that draws the rotations; every call with the same T hashes
  /// with the same rotations. Used as its uint64 bit pattern. Default: 0
  TORCH_ARG(int64_t, seed) = 0;
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

/// LSH attention. x: [B, T, dim] -> [B, T, dim].
/// For each round r: R_r ~ N(0, 1) of shape [H, head_dim, ceil(n_b / 2)] drawn (float32) from
/// one CPU generator seeded with `seed` per call, rounds in order; a token's bucket in head h is
/// argmax over the first n_b entries of [q R_r ; -q R_r] (angular LSH of its query, after
/// rope if any, as in
/// Reformer); query i then sees key j iff both tokens share the bucket (a bool keep mask for
/// functional::dot_product_attention, so i always sees itself). Output = mean of the per-round
/// attention over the rounds in which the query saw a key, so weight rows sum to 1 and keys outside
/// every bucket of a query (or masked) get exactly 0. Parameters: q_proj, k_proj, v_proj, o_proj
/// [dim, dim] (attzoo's w_q, w_k, w_v, w_o; no public attzoo checkpoints exist, so the library-wide
/// names are used). forward(x, attn_mask): a bool mask (true = attend) is AND-ed with the buckets,
/// a float mask is added to the logits. Non-causal, so no decoding. This is the O(T^2) masked form;
/// the sort-and-chunk form of Reformer is not implemented. Deviations from attzoo: rotations come
/// from the seeded generator, not the global RNG, so a call is reproducible (attzoo draws new ones
/// every call); hashing uses Reformer's [xR ; -xR] (attzoo: argmax of xR with n_b columns); dropout
/// defaults to 0 (attzoo: 0.1); fully masked rows give zeros (attzoo: NaN).
class LSHAttentionImpl : public AttentionCloneable<LSHAttentionImpl> {
 public:
  explicit LSHAttentionImpl(LSHAttentionOptions options);
  LSHAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "LSHAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// The bucket of every token per round and head: Long [num_hashes, B, H, T].
  torch::Tensor buckets(const torch::Tensor& x);
  /// The rotations used for a call with seq_len tokens: Float [num_hashes, H, head_dim,
  /// ceil(n_b / 2)] on the CPU.
  torch::Tensor rotations(int64_t seq_len) const;

  LSHAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  torch::Tensor hash(const torch::Tensor& q) const;
  AttentionOutput run(const torch::Tensor& x, const torch::Tensor& attn_mask, bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(LSHAttention);

}  // namespace attnkit
