#pragma once
// RMSNorm (Zhang & Sennrich, 2019), with the zero-centered weight option of d9d / Qwen 3.5.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>

namespace attnkit {

/// y = x * rsqrt(mean(x^2, -1) + eps) * w (or * (1 + w) when zero-centered), computed in float
/// (double for double inputs) and cast back to x's dtype.
/// x: [..., dim], weight: [dim] or undefined (no affine weight).
torch::Tensor rms_norm(const torch::Tensor& x,
                       const torch::Tensor& weight,
                       double eps,
                       bool zero_centered = false);

/// Options for `RMSNorm`.
/// Example:
///   RMSNorm norm(RMSNormOptions(128).eps(1e-5).zero_centered(true));
struct RMSNormOptions {
  /* implicit */ RMSNormOptions(int64_t dim);
  /// Width of the normalised (last) dimension. Required.
  TORCH_ARG(int64_t, dim);
  /// Added to the mean square before the reciprocal square root. Default: 1e-6
  TORCH_ARG(double, eps) = 1e-6;
  /// Store the weight as an offset from 1 (initialised to zeros, applied as 1 + w). Default: false
  TORCH_ARG(bool, zero_centered) = false;
};

/// Root-mean-square layer norm over the last dimension. Parameter: weight [dim].
class RMSNormImpl : public torch::nn::Cloneable<RMSNormImpl> {
 public:
  explicit RMSNormImpl(RMSNormOptions options);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  /// x: [..., dim] -> [..., dim]
  torch::Tensor forward(const torch::Tensor& x);

  RMSNormOptions options;
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

}  // namespace attnkit
