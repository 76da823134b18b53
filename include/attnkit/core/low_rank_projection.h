#pragma once
// A bottleneck projection: down, RMSNorm, up (d9d LowRankProjection; DeepSeek's q_a/q_b path).

#include <attnkit/core/rms_norm.h>

#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `LowRankProjection`.
/// Example:
///   LowRankProjection proj(LowRankProjectionOptions(/*in=*/512, /*bottleneck=*/64, /*out=*/512));
struct LowRankProjectionOptions {
  LowRankProjectionOptions(int64_t in_features, int64_t bottleneck, int64_t out_features);
  /// Input width. Required.
  TORCH_ARG(int64_t, in_features);
  /// Width of the normalised bottleneck. Required.
  TORCH_ARG(int64_t, bottleneck);
  /// Output width. Required.
  TORCH_ARG(int64_t, out_features);
  /// RMSNorm epsilon on the bottleneck. Default: 1e-6
  TORCH_ARG(double, norm_eps) = 1e-6;
};

/// y = up_proj(norm(down_proj(x))). x: [..., in] -> [..., out].
/// Parameters: down_proj.weight [bottleneck, in], norm.weight [bottleneck], up_proj.weight
/// [out, bottleneck].
class LowRankProjectionImpl : public torch::nn::Cloneable<LowRankProjectionImpl> {
 public:
  explicit LowRankProjectionImpl(LowRankProjectionOptions options);
  LowRankProjectionImpl(int64_t in_features, int64_t bottleneck, int64_t out_features);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);

  LowRankProjectionOptions options;
  torch::nn::Linear down_proj{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear up_proj{nullptr};
};
TORCH_MODULE(LowRankProjection);

}  // namespace attnkit
