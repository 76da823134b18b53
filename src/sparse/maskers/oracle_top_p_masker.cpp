#include <attnkit/sparse/fixed_maskers.h>

#include <torch/torch.h>

#include <limits>

namespace attnkit {
namespace sparse {

OracleTopPMasker::OracleTopPMasker(OracleTopPMaskerOptions options) : options_(options) {
  TORCH_CHECK(options_.top_p() >= 0.0 && options_.top_p() <= 1.0,
              "OracleTopPMasker: top_p must be in [0, 1], got ", options_.top_p());
}

MaskerPtr OracleTopPMasker::from_config(const MaskerConfig& config) {
  return std::make_shared<OracleTopPMasker>(OracleTopPMaskerOptions(config.number("top_p")));
}

Mask OracleTopPMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const auto shape = in.mask_shape();
  if (static_cast<int64_t>(options_.top_p() * static_cast<double>(in.k_len)) >= in.k_len) {
    return Mask::full(shape, previous.dtype(), in.queries.device());
  }
  const bool is_double = in.queries.scalar_type() == torch::kDouble;
  const double lowest = is_double ? std::numeric_limits<double>::lowest()
                                  : std::numeric_limits<float>::lowest();
  auto s = in.raw_scores().mul(in.scaling);
  if (in.attention_mask.defined()) s = s + in.attention_mask.to(s.scalar_type());
  s = fill_active(s, previous, lowest);
  auto e = (s - std::get<0>(s.max(-1, /*keepdim=*/true))).exp();
  auto sorted = std::get<0>(e.sort(-1, /*descending=*/true));
  auto total = sorted.sum(-1, /*keepdim=*/true);
  auto share = sorted.cumsum(-1) / total;
  auto target = torch::full_like(total, options_.top_p());
  auto pos = torch::searchsorted(share.contiguous(), target, /*out_int32=*/false, /*right=*/true)
                 .clamp_max(in.k_len - 1);
  auto threshold = sorted.gather(-1, pos);
  // A row with nothing left to pick (every key already active, or all masked) adds nothing.
  auto fresh = e.ge(threshold) & e.gt(0) & total.gt(0);
  Mask added = Mask::from_dense(shape, fresh.to(previous.dtype()), previous.dtype());
  return previous.is_empty() ? added : previous.merge(added);
}

}  // namespace sparse
}  // namespace attnkit
