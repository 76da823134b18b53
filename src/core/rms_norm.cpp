#include <attnkit/core/rms_norm.h>

namespace attnkit {

torch::Tensor rms_norm(const torch::Tensor& x,
                       const torch::Tensor& weight,
                       double eps,
                       bool zero_centered) {
  TORCH_CHECK(x.dim() >= 1, "rms_norm: expected x with at least 1 dim, got a scalar");
  TORCH_CHECK(x.is_floating_point(), "rms_norm: expected a floating-point x, got ",
              x.scalar_type());
  // opmath: float for bf16/fp16, the input's own type otherwise.
  const auto compute = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  torch::Tensor xf = x.to(compute);
  torch::Tensor y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (weight.defined()) {
    TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1),
                "rms_norm: expected weight of shape [", x.size(-1), "], got ", weight.sizes());
    torch::Tensor w = weight.to(compute);
    y = y * (zero_centered ? w + 1.0 : w);
  }
  return y.to(x.scalar_type());
}

RMSNormOptions::RMSNormOptions(int64_t dim) : dim_(dim) {}

RMSNormImpl::RMSNormImpl(RMSNormOptions options_) : options(std::move(options_)) {
  TORCH_CHECK(options.dim() > 0, "RMSNorm: dim must be positive, got ", options.dim());
  TORCH_CHECK(options.eps() >= 0, "RMSNorm: eps must be >= 0, got ", options.eps());
  reset();
}

void RMSNormImpl::reset() {
  weight = register_parameter("weight", torch::empty({options.dim()}));
  reset_parameters();
}

void RMSNormImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  if (options.zero_centered()) {
    weight.zero_();
  } else {
    weight.fill_(1.0);
  }
}

void RMSNormImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::RMSNorm(dim=" << options.dim() << ", eps=" << options.eps()
         << ", zero_centered=" << (options.zero_centered() ? "true" : "false") << ")";
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.dim(),
              "RMSNorm: expected x of shape [..., dim] with dim = ", options.dim(), ", got ",
              x.sizes());
  return rms_norm(x, weight, options.eps(), options.zero_centered());
}

}  // namespace attnkit
