#include <attnkit/sparse/sampling_maskers.h>

#include <torch/torch.h>

namespace attnkit {
namespace sparse {

RandomSamplingMasker::RandomSamplingMasker(RandomSamplingMaskerOptions options)
    : options_(options) {
  const double rate = options_.sampling_rate();
  TORCH_CHECK(rate > 0.0 && rate <= 1.0,
              "RandomSamplingMasker: sampling_rate must be in (0, 1], got ", rate);
}

MaskerPtr RandomSamplingMasker::from_config(const MaskerConfig& config) {
  return std::make_shared<RandomSamplingMasker>(
      RandomSamplingMaskerOptions(config.number("sampling_rate")));
}

Mask RandomSamplingMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const double rate = options_.sampling_rate();
  const int64_t n = static_cast<int64_t>(rate * static_cast<double>(in.k_len));
  // Upstream fails on an empty draw (row-wise lists need k >= 1); nothing drawn adds nothing.
  if (n <= 0) return previous;
  const auto shape = in.mask_shape();
  auto device = in.queries.device();
  // With replacement and over all keys, ignoring the previous mask (as upstream).
  auto cols = torch::randint(0, in.k_len, {in.batch, in.heads, in.q_len, n},
                             torch::TensorOptions().dtype(torch::kLong).device(device));
  auto data = torch::full(cols.sizes(), rate,
                          torch::TensorOptions().dtype(previous.dtype()).device(device));
  Mask drawn = without_duplicates(
      Mask::from_row_wise(shape, cols, data, previous.dtype(), /*use_padding=*/false,
                          /*sparse=*/true));
  return previous.is_empty() ? drawn : previous.merge(drawn);
}

}  // namespace sparse
}  // namespace attnkit
