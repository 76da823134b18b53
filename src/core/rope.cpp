#include <attnkit/core/rope.h>

#include <cmath>
#include <ostream>

namespace attnkit {

const char* to_string(RopeStyle style) {
  return style == RopeStyle::kHalf ? "half" : "interleaved";
}
const char* to_string(RopeChannels channels) {
  return channels == RopeChannels::kFirst ? "first" : "last";
}
const char* to_string(RopeScaling scaling) {
  switch (scaling) {
    case RopeScaling::kNone:
      return "none";
    case RopeScaling::kLinear:
      return "linear";
    case RopeScaling::kNtk:
      return "ntk";
    case RopeScaling::kYarn:
      return "yarn";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& stream, const RopeOptions& o) {
  stream << "rope(dim=" << o.dim() << ", style=" << to_string(o.style())
         << ", channels=" << to_string(o.channels()) << ", theta=" << o.theta()
         << ", scaling=" << to_string(o.scaling());
  if (o.scaling() != RopeScaling::kNone) stream << ", factor=" << o.factor();
  if (o.scaling() == RopeScaling::kYarn) {
    stream << ", beta_fast=" << o.beta_fast() << ", beta_slow=" << o.beta_slow()
           << ", original_max_position_embeddings=" << o.original_max_position_embeddings();
  }
  return stream << ")";
}

torch::Tensor rope_inverse_frequencies(const RopeOptions& o, int64_t d, double* mscale) {
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  // inv_freq_i = base^(-2i/d), i = 0 .. d/2-1
  auto inv_freq_for = [&](double base) {
    return torch::pow(base, -torch::arange(0, d, 2, f64) / static_cast<double>(d));
  };
  double scale = 1.0;
  torch::Tensor inv;
  switch (o.scaling()) {
    case RopeScaling::kNone:
      inv = inv_freq_for(o.theta());
      break;
    case RopeScaling::kLinear:
      inv = inv_freq_for(o.theta()) / o.factor();
      break;
    case RopeScaling::kNtk:
      inv = inv_freq_for(o.theta() * std::pow(o.factor(), static_cast<double>(d) / (d - 2)));
      break;
    case RopeScaling::kYarn: {
      inv = inv_freq_for(o.theta());
      // correction dim c(r) = d * ln(orig / (2 pi r)) / (2 ln base): the channel whose wavelength
      // fits r rotations into the original context.
      auto correction = [&](double rotations) {
        return d * std::log(o.original_max_position_embeddings() / (2 * M_PI * rotations)) /
               (2 * std::log(o.theta()));
      };
      double low = std::max(correction(o.beta_fast()), 0.0);
      double high = std::min(correction(o.beta_slow()), d / 2.0 - 1);
      if (high == low) high += 0.001;  // avoid a zero-width ramp
      torch::Tensor ramp = ((torch::arange(0, d / 2, f64) - low) / (high - low)).clamp(0.0, 1.0);
      // inv <- lerp(inv, inv / factor, ramp)
      inv = inv * (1 - ramp) + (inv / o.factor()) * ramp;
      if (o.factor() > 1) scale = 0.1 * std::log(o.factor()) + 1.0;
      break;
    }
  }
  if (mscale) *mscale = scale;
  return inv;
}

RotaryEmbedding::RotaryEmbedding(RopeOptions options, int64_t head_dim, const std::string& owner)
    : options_(options), head_dim_(head_dim) {
  TORCH_CHECK(head_dim > 0, owner, ": head_dim must be positive, got ", head_dim);
  rope_dim_ = options.dim() == 0 ? head_dim : options.dim();
  TORCH_CHECK(rope_dim_ > 0, owner, ": rope dim must be positive, got ", options.dim());
  TORCH_CHECK(rope_dim_ % 2 == 0, owner, ": rope dim must be even, got ", rope_dim_);
  TORCH_CHECK(rope_dim_ <= head_dim, owner, ": rope dim (", rope_dim_, ") must be <= head_dim (",
              head_dim, ")");
  TORCH_CHECK(options.theta() > 1, owner, ": rope theta must be > 1, got ", options.theta());
  if (options.scaling() != RopeScaling::kNone) {
    TORCH_CHECK(options.factor() > 0, owner, ": rope scaling factor must be > 0, got ",
                options.factor());
  }
  if (options.scaling() == RopeScaling::kNtk) {
    TORCH_CHECK(rope_dim_ > 2, owner, ": NTK rope scaling needs rope dim > 2, got ", rope_dim_);
  }
  if (options.scaling() == RopeScaling::kYarn) {
    TORCH_CHECK(options.beta_fast() > options.beta_slow(), owner,
                ": YaRN needs beta_fast > beta_slow, got beta_fast=", options.beta_fast(),
                " and beta_slow=", options.beta_slow());
    TORCH_CHECK(options.original_max_position_embeddings() > 0, owner,
                ": YaRN original_max_position_embeddings must be positive, got ",
                options.original_max_position_embeddings());
  }
  inv_freq_ = rope_inverse_frequencies(options, rope_dim_, &mscale_);
}

torch::Tensor RotaryEmbedding::apply(const torch::Tensor& x, int64_t offset) const {
  TORCH_CHECK(x.dim() == 3 || x.dim() == 4,
              "RotaryEmbedding: expected x of shape [B, T, H, D] or [B, T, D], got ", x.sizes());
  TORCH_CHECK(x.size(-1) == head_dim_, "RotaryEmbedding: expected x.size(-1) == head_dim (",
              head_dim_, "), got ", x.size(-1));
  TORCH_CHECK(offset >= 0, "RotaryEmbedding: position offset must be >= 0, got ", offset);
  const int64_t seq_len = x.size(1);
  const int64_t half = rope_dim_ / 2;
  // Angles in double so that large positions keep their precision; cos/sin then in the compute
  // dtype (float for reduced-precision inputs).
  const auto compute = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  torch::Tensor pos = torch::arange(offset, offset + seq_len, torch::dtype(torch::kDouble));
  torch::Tensor angles = torch::outer(pos, inv_freq_).to(x.device());  // [T, rope_dim/2]
  torch::Tensor cos = (torch::cos(angles) * mscale_).to(compute);
  torch::Tensor sin = (torch::sin(angles) * mscale_).to(compute);
  // broadcast over batch (and heads): [T, 1, half] for 4-D input, [T, half] for 3-D
  if (x.dim() == 4) {
    cos = cos.unsqueeze(1);
    sin = sin.unsqueeze(1);
  }

  const bool first = options_.channels() == RopeChannels::kFirst;
  const int64_t start = first ? 0 : head_dim_ - rope_dim_;
  torch::Tensor xr = x.narrow(-1, start, rope_dim_).to(compute);
  torch::Tensor rotated;
  if (options_.style() == RopeStyle::kHalf) {
    // [x1 | x2] -> [x1 cos - x2 sin | x2 cos + x1 sin]
    torch::Tensor x1 = xr.narrow(-1, 0, half);
    torch::Tensor x2 = xr.narrow(-1, half, half);
    rotated = torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
  } else {
    // (x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin, x_2i+1 cos + x_2i sin)
    auto pair_shape = xr.sizes().vec();
    pair_shape.back() = half;
    pair_shape.push_back(2);
    torch::Tensor pairs = xr.reshape(pair_shape);
    torch::Tensor x0 = pairs.select(-1, 0);
    torch::Tensor x1 = pairs.select(-1, 1);
    rotated = torch::stack({x0 * cos - x1 * sin, x1 * cos + x0 * sin}, -1).flatten(-2);
  }
  rotated = rotated.to(x.scalar_type());
  if (rope_dim_ == head_dim_) return rotated;
  torch::Tensor pass = x.narrow(-1, first ? rope_dim_ : 0, head_dim_ - rope_dim_);
  return first ? torch::cat({rotated, pass}, -1) : torch::cat({pass, rotated}, -1);
}

}  // namespace attnkit
