#include <attnkit/core/low_rank_projection.h>

namespace attnkit {

LowRankProjectionOptions::LowRankProjectionOptions(int64_t in_features,
                                                   int64_t bottleneck,
                                                   int64_t out_features)
    : in_features_(in_features), bottleneck_(bottleneck), out_features_(out_features) {}

LowRankProjectionImpl::LowRankProjectionImpl(LowRankProjectionOptions options_)
    : options(std::move(options_)) {
  TORCH_CHECK(options.in_features() > 0, "LowRankProjection: in_features must be positive, got ",
              options.in_features());
  TORCH_CHECK(options.bottleneck() > 0, "LowRankProjection: bottleneck must be positive, got ",
              options.bottleneck());
  TORCH_CHECK(options.out_features() > 0, "LowRankProjection: out_features must be positive, got ",
              options.out_features());
  reset();
}

LowRankProjectionImpl::LowRankProjectionImpl(int64_t in_features,
                                             int64_t bottleneck,
                                             int64_t out_features)
    : LowRankProjectionImpl(LowRankProjectionOptions(in_features, bottleneck, out_features)) {}

void LowRankProjectionImpl::reset() {
  down_proj = register_module(
      "down_proj",
      torch::nn::Linear(
          torch::nn::LinearOptions(options.in_features(), options.bottleneck()).bias(false)));
  norm = register_module("norm",
                         RMSNorm(RMSNormOptions(options.bottleneck()).eps(options.norm_eps())));
  up_proj = register_module(
      "up_proj",
      torch::nn::Linear(
          torch::nn::LinearOptions(options.bottleneck(), options.out_features()).bias(false)));
}

void LowRankProjectionImpl::reset_parameters() {
  down_proj->reset_parameters();
  norm->reset_parameters();
  up_proj->reset_parameters();
}

void LowRankProjectionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::LowRankProjection(in_features=" << options.in_features()
         << ", bottleneck=" << options.bottleneck() << ", out_features=" << options.out_features()
         << ", norm_eps=" << options.norm_eps() << ")";
}

torch::Tensor LowRankProjectionImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.in_features(),
              "LowRankProjection: expected x of shape [..., ", options.in_features(), "], got ",
              x.sizes());
  return up_proj(norm(down_proj(x)));
}

}  // namespace attnkit
