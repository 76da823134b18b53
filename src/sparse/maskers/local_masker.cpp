#include <attnkit/sparse/fixed_maskers.h>

#include <torch/torch.h>

namespace attnkit {
namespace sparse {

LocalMasker::LocalMasker(LocalMaskerOptions options) : options_(options) {
  TORCH_CHECK(options_.window_size().value() > 0, "LocalMasker: window_size must be > 0, got ",
              options_.window_size().str());
}

MaskerPtr LocalMasker::from_config(const MaskerConfig& config) {
  return std::make_shared<LocalMasker>(LocalMaskerOptions(config.size("window_size")));
}

Mask LocalMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const int64_t w = options_.window_size().resolve(in.k_len);
  const auto shape = in.mask_shape();
  if (in.k_len <= w + in.q_len) return Mask::full(shape, previous.dtype(), in.queries.device());
  // Here every window lies inside [0, Tk): pos(i) - w + 1 >= Tk - Tq - w + 1 > 0.
  auto cols = window_columns(in.q_len, in.k_len, w, in.queries.device())
                  .expand({in.batch, in.heads, in.q_len, w});
  if (previous.is_dense()) {
    // Upstream's dense path: keys after pos(i) are cleared, the window is set to 1.
    auto dense = drop_future(previous).dense().clone();
    dense.scatter_(-1, cols, 1.0);
    return Mask::from_dense(shape, dense, previous.dtype());
  }
  // INDEX or EMPTY: the same pattern kept as lists (a window entry caps at 1 on merge).
  Mask window = mask_from_columns(shape, cols.contiguous(), previous.dtype());
  return previous.is_empty() ? window : drop_future(previous).merge(window);
}

}  // namespace sparse
}  // namespace attnkit
