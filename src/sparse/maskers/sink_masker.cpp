#include <attnkit/sparse/fixed_maskers.h>

#include <torch/torch.h>

namespace attnkit {
namespace sparse {

SinkMasker::SinkMasker(SinkMaskerOptions options) : options_(options) {
  TORCH_CHECK(options_.sink_size().value() > 0, "SinkMasker: sink_size must be > 0, got ",
              options_.sink_size().str());
}

MaskerPtr SinkMasker::from_config(const MaskerConfig& config) {
  return std::make_shared<SinkMasker>(SinkMaskerOptions(config.size("sink_size")));
}

Mask SinkMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const int64_t sink = options_.sink_size().resolve(in.k_len);
  const auto shape = in.mask_shape();
  if (in.k_len <= sink) return Mask::full(shape, previous.dtype(), in.queries.device());
  if (sink <= 0) return previous;
  if (previous.is_dense()) {
    auto dense = previous.dense().clone();
    dense.narrow(-1, 0, sink).fill_(1.0);
    return Mask::from_dense(shape, dense, previous.dtype());
  }
  auto cols = torch::arange(sink, torch::TensorOptions()
                                      .dtype(torch::kLong)
                                      .device(in.queries.device()))
                  .expand({in.batch, in.heads, in.q_len, sink})
                  .contiguous();
  Mask sinks = mask_from_columns(shape, cols, previous.dtype());
  return previous.is_empty() ? sinks : previous.merge(sinks);
}

}  // namespace sparse
}  // namespace attnkit
