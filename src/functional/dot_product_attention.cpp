#include <attnkit/functional/dot_product_attention.h>

namespace attnkit {
namespace functional {

AttentionResult dot_product_attention(const torch::Tensor& q,
                                      const torch::Tensor& k,
                                      const torch::Tensor& v,
                                      const DotProductAttentionOptions& options) {
  return reference_attention(q, k, v, options);
}

}  // namespace functional
}  // namespace attnkit
