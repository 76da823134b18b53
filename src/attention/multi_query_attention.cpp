#include <attnkit/attention/multi_query_attention.h>

namespace attnkit {

MultiQueryAttentionImpl::MultiQueryAttentionImpl(MultiQueryAttentionOptions options)
    : AttentionCloneable(std::move(options), /*num_kv_heads=*/1, "MultiQueryAttention") {
  reset();
}

MultiQueryAttentionImpl::MultiQueryAttentionImpl(int64_t dim, int64_t num_heads)
    : MultiQueryAttentionImpl(MultiQueryAttentionOptions(dim, num_heads)) {}

void MultiQueryAttentionImpl::reset() { register_projections(); }

}  // namespace attnkit
