#pragma once
// The attention call every dense mechanism makes. It validates once and routes to the fused
// engine (flex_attention) by default; the reference runs for need_weights, dropout > 0, fp64,
// or when ATTNKIT_BACKEND=reference.

#include <attnkit/core/reference_attention.h>

namespace attnkit {
namespace functional {

/// Scaled dot-product attention with GQA, causal (bottom-right aligned), sliding window, sinks,
/// boolean mask, additive bias and dropout.
///   q: [B, Hq, Tq, D], k: [B, Hkv, Tk, D], v: [B, Hkv, Tk, Dv] -> output [B, Hq, Tq, Dv]
/// Example:
///   auto out = functional::dot_product_attention(q, k, v,
///       DotProductAttentionOptions().causal(true)).output;
AttentionResult dot_product_attention(const torch::Tensor& q,
                                      const torch::Tensor& k,
                                      const torch::Tensor& v,
                                      const DotProductAttentionOptions& options = {});

}  // namespace functional
}  // namespace attnkit
