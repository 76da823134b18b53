#pragma once
// Multi-query attention (Shazeer, 2019, "Fast Transformer Decoding: One Write-Head is All You
// Need"): all query heads share one key/value head, so the decode cache is num_heads times smaller.

#include <attnkit/attention/projected_attention.h>

#include <torch/nn/cloneable.h>

namespace attnkit {

/// Options for `MultiQueryAttention`: dim, num_heads (required), causal, dropout, temperature,
/// bias, rope (ProjectedAttentionOptions documents each).
/// Example:
///   MultiQueryAttention attn(MultiQueryAttentionOptions(/*dim=*/512,
///   /*num_heads=*/8).causal(true));
using MultiQueryAttentionOptions = ProjectedAttentionOptions;

/// Multi-query attention (Shazeer, 2019, "Fast Transformer Decoding: One Write-Head is All You
/// Need"): all query heads share one key/value head, so the decode cache is num_heads times
/// smaller. x: [B, T, dim] -> [B, T, dim]. Parameters: q_proj, k_proj, v_proj, o_proj.
class MultiQueryAttentionImpl
    : public AttentionCloneable<MultiQueryAttentionImpl, ProjectedAttentionImpl> {
 public:
  explicit MultiQueryAttentionImpl(MultiQueryAttentionOptions options);
  MultiQueryAttentionImpl(int64_t dim, int64_t num_heads);
  void reset() override;
  std::string mechanism() const override { return "MultiQueryAttention"; }
};
ATTNKIT_ATTENTION_MODULE(MultiQueryAttention);

}  // namespace attnkit
