#pragma once
// BigBird block-sparse attention (Zaheer et al., 2020, "Big Bird: Transformers for Longer
// Sequences"), the internal-global-token (ITC) form: every query block sees a few global
// blocks, a window of neighbour blocks and a few random blocks. attnhut's BigBirdAttention
// (docs/catalog.md, "BigBird attention").

#include <attnkit/attention/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `BigBirdAttention`.
/// Example:
///   BigBirdAttention attn(BigBirdAttentionOptions(/*dim=*/512, /*num_heads=*/8)
///       .block_size(64).num_random_blocks(2).seed(7));
struct BigBirdAttentionOptions {
  BigBirdAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Tokens per block; the last block may be partial. Default: 64
  TORCH_ARG(int64_t, block_size) = 64;
  /// Width of the local window in blocks (odd): block j sees j - w/2 .. j + w/2 (causal:
  /// j - w/2 .. j). Default: 3
  TORCH_ARG(int64_t, num_window_blocks) = 3;
  /// Random key blocks drawn for each non-global query block (fewer when fewer candidates
  /// exist). Default: 3
  TORCH_ARG(int64_t, num_random_blocks) = 3;
  /// Leading blocks that attend to and are attended by every block. Default: 2
  TORCH_ARG(int64_t, num_global_blocks) = 2;
  /// Mask future keys (and allow decoding). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Seed of the CPU generator that draws the random blocks; the same pattern on every forward.
  /// Used as its uint64 bit pattern. Default: 0
  TORCH_ARG(int64_t, seed) = 0;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
};

/// BigBird attention. x: [B, T, dim] -> [B, T, dim].
/// Blocks are cut every block_size tokens (nb = ceil(T / block_size)); `block_mask(nb)` says
/// which key blocks each query block sees; a token sees a key iff its block sees the key's
/// block (and, if causal, the key is not in its future). Then softmax attention per head,
/// merge, o_proj.
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attnhut's fused qkv [3 dim, dim]
/// split into three, and proj renamed o_proj).
/// Key padding: `forward_padded(x, key_padding_mask)` with key_padding_mask [B, T] bool
/// (true = real token), or any bool/additive mask via forward(x, attn_mask); both are combined
/// with the block pattern. A query that sees no key gives zeros.
/// Decoding (causal only): caches k and v [B, H, L, hd]; a causal block row does not depend on
/// the number of blocks, so each chunk reads its rows of block_mask(ceil(L / block_size)).
/// Deviations from attnhut: masked logits are -inf (fully masked rows still give zeros);
/// the sequence is not zero-padded to a multiple of block_size (padded keys were masked and
/// padded rows cut, so the outputs are the same).
class BigBirdAttentionImpl : public AttentionCloneable<BigBirdAttentionImpl> {
 public:
  explicit BigBirdAttentionImpl(BigBirdAttentionOptions options);
  BigBirdAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  /// key_padding_mask: [B, T] bool, true = real token; padded keys are never attended.
  torch::Tensor forward_padded(const torch::Tensor& x, const torch::Tensor& key_padding_mask);
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "BigBirdAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// Block connectivity global | window | random: Bool [num_blocks, num_blocks] on the CPU,
  /// true where query block i sees key block j (before the token-level causal rule).
  /// Global blocks g < num_global_blocks: row g and column g all true. Window: j - w/2 .. j + w/2
  /// (causal: .. j). Random: for each non-global block j in order, the candidates are the
  /// blocks outside the globals and outside j - w/2 .. j + w/2 (causal: also < j - w/2);
  /// randperm(#candidates) from one CPU generator seeded with `seed` per call picks the first
  /// num_random_blocks of them (no draw when there is no candidate).
  torch::Tensor block_mask(int64_t num_blocks) const;

  BigBirdAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      const torch::Tensor& key_padding_mask,
                      DecodeState* state,
                      bool need_weights);
};
ATTNKIT_ATTENTION_MODULE(BigBirdAttention);

}  // namespace attnkit
