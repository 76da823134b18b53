#pragma once
// Block (chunked) self-attention: the sequence is cut into blocks and every token attends only
// inside its block; with overlap, blocks advance by half a block and each token's output is
// the average over the blocks that cover it. attzoo's BlockSelfAttention (docs/catalog.md,
// "Block attention").

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `BlockAttention`.
/// Example:
///   BlockAttention attn(BlockAttentionOptions(/*dim=*/256, /*num_heads=*/4)
///       .block_size(32).overlap(true));
struct BlockAttentionOptions {
  BlockAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Tokens per block; the last block may be partial. A sequence no longer than one block is
  /// plain attention. Default: 64
  TORCH_ARG(int64_t, block_size) = 64;
  /// Blocks start every block_size / 2 tokens instead of every block_size (needs
  /// block_size >= 2), so most tokens lie in several blocks. Default: false
  TORCH_ARG(bool, overlap) = false;
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

/// Block attention. x: [B, T, dim] -> [B, T, dim].
/// Blocks: with stride s = block_size (overlap: block_size / 2), block c covers tokens
/// [c s, min(c s + block_size, T)); blocks are added while the previous one ends before T.
/// Inside each block, independent multi-head softmax attention. A token's output (and its row
/// of attention weights) is the mean over the blocks covering it whose attention saw at least
/// one key, so weight rows sum to 1.
/// The blocks are grouped into phases of pairwise-disjoint blocks (1 phase without overlap,
/// ceil(block_size / s) with it); `keep_masks(T)` gives one block-diagonal bool keep mask per
/// phase, and each phase is one functional::dot_product_attention call (a block pattern the
/// block-sparse engine can run).
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attzoo's w_q, w_k, w_v, w_o; no
/// public attzoo checkpoints exist, so the library-wide names are used).
/// forward(x, attn_mask): a bool mask (true = attend) is AND-ed with every block, a float mask
/// is added to the logits. Non-causal, so no decoding.
/// Deviations from attzoo: with overlap, attzoo blends each later block over its whole span
/// with a linspace(0, 1) ramp against what is already there, so the tail of a block that no
/// earlier block covered is scaled down toward 0 and earlier outputs are partly discarded; its
/// weights are overwritten per block (rows can sum above 1). Here each token is the plain mean
/// of the blocks that cover it. attzoo silently replaces a non-positive block_size by 1 and a
/// num_heads that does not divide dim by gcd(dim, num_heads); here both raise. Dropout defaults
/// to 0 (attzoo: 0.1 on the weights); fully masked rows give zeros (attzoo: NaN).
class BlockAttentionImpl : public AttentionCloneable<BlockAttentionImpl> {
 public:
  explicit BlockAttentionImpl(BlockAttentionOptions options);
  BlockAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "BlockAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// First token of every block for a sequence of seq_len tokens: Long [num_blocks].
  torch::Tensor block_starts(int64_t seq_len) const;
  /// One block-diagonal pattern per phase: Bool [num_phases, seq_len, seq_len] on the CPU, true
  /// where query i and key j lie in the same block of that phase. Phase p holds the blocks
  /// c = p, p + P, p + 2P, ... (P = num_phases), which never overlap.
  torch::Tensor keep_masks(int64_t seq_len) const;

  BlockAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x, const torch::Tensor& attn_mask, bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(BlockAttention);

}  // namespace attnkit
