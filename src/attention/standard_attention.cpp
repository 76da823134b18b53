#include <attnkit/attention/standard_attention.h>

namespace attnkit {

StandardAttentionImpl::StandardAttentionImpl(StandardAttentionOptions options)
    : AttentionCloneable(std::move(options), /*num_kv_heads=*/0, "StandardAttention") {
  reset();
}

StandardAttentionImpl::StandardAttentionImpl(int64_t dim, int64_t num_heads)
    : StandardAttentionImpl(StandardAttentionOptions(dim, num_heads)) {}

void StandardAttentionImpl::reset() { register_projections(); }

}  // namespace attnkit
