#include <attnkit/sparse/fixed_maskers.h>

namespace attnkit {
namespace sparse {

MaskerPtr CausalMasker::from_config(const MaskerConfig&) {
  return std::make_shared<CausalMasker>();
}

Mask CausalMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  // One query at the end of the keys sees every key: nothing to drop.
  if (in.q_len == 1 && previous.is_empty()) {
    return Mask::full(in.mask_shape(), previous.dtype(), in.queries.device());
  }
  return drop_future(previous);
}

}  // namespace sparse
}  // namespace attnkit
