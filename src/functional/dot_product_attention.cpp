#include <attnkit/functional/dot_product_attention.h>

#include <attnkit/functional/flex_attention.h>

namespace attnkit {
namespace functional {

AttentionResult dot_product_attention(const torch::Tensor& q,
                                      const torch::Tensor& k,
                                      const torch::Tensor& v,
                                      const DotProductAttentionOptions& options) {
  // The attention weights and dropout exist only on the reference path; so does everything
  // when ATTNKIT_BACKEND=reference.
  if (options.need_weights() || options.dropout() > 0 || !fused_backend_selected()) {
    return reference_attention(q, k, v, options);
  }
  check_attention_inputs("dot_product_attention", q, k, v, options);
  FlexAttentionOptions flex;
  flex.scale(options.scale())
      .causal(options.causal())
      .window_left(options.window_left())
      .window_right(options.window_right())
      .sinks(options.sinks())
      .mask(options.mask())
      .bias(options.bias());
  // A dense keep mask over long sequences (BigBird, MiniMax, block, dilated and window patterns)
  // also becomes a block mask, so blocks it hides entirely are skipped rather than masked
  // element by element. Short or single-query calls keep the plain path (and split-KV decode).
  constexpr int64_t kMaskBlock = 128;
  if (options.mask().defined() && q.size(2) > kMaskBlock && k.size(2) > kMaskBlock) {
    flex.block_mask(block_mask_from_keep(options.mask(), kMaskBlock, kMaskBlock));
  }
  FlexAttentionResult r = flex_attention(q, k, v, flex);
  AttentionResult result;
  result.output = r.output;
  result.lse = r.lse;
  return result;
}

}  // namespace functional
}  // namespace attnkit
