#pragma once
// Multi-head scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need"):
// every head has its own keys and values.

#include <attnkit/attention/projected_attention.h>

#include <torch/nn/cloneable.h>

namespace attnkit {

/// Options for `StandardAttention`: dim, num_heads (required), causal, dropout, temperature,
/// bias, rope (ProjectedAttentionOptions documents each).
/// Example:
///   StandardAttention attn(StandardAttentionOptions(/*dim=*/512, /*num_heads=*/8).causal(true));
using StandardAttentionOptions = ProjectedAttentionOptions;

/// Multi-head scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need"):
/// every head has its own keys and values. x: [B, T, dim] -> [B, T, dim]. Parameters: q_proj,
/// k_proj, v_proj, o_proj.
class StandardAttentionImpl
    : public AttentionCloneable<StandardAttentionImpl, ProjectedAttentionImpl> {
 public:
  explicit StandardAttentionImpl(StandardAttentionOptions options);
  StandardAttentionImpl(int64_t dim, int64_t num_heads);
  void reset() override;
  std::string mechanism() const override { return "StandardAttention"; }
};
ATTNKIT_ATTENTION_MODULE(StandardAttention);

}  // namespace attnkit
