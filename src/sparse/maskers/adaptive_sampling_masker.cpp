#include <attnkit/sparse/sampling_maskers.h>

#include <torch/torch.h>

#include <algorithm>

namespace attnkit {
namespace sparse {

Mask sampling_mask_with_budget(const torch::Tensor& budgets,
                               const torch::Tensor& probability,
                               int64_t k_len,
                               int64_t start,
                               int64_t end,
                               torch::Dtype dtype) {
  TORCH_CHECK(budgets.defined() && budgets.dim() == 4 && budgets.size(3) == 1 &&
                  torch::isIntegralType(budgets.scalar_type(), /*includeBool=*/false),
              "sampling_mask_with_budget: budgets must be an integer [B, H, Tq, 1] tensor, got ",
              budgets.defined() ? budgets.sizes() : torch::IntArrayRef{}, " ",
              budgets.defined() ? budgets.scalar_type() : torch::kLong);
  TORCH_CHECK(probability.defined() && probability.sizes() == budgets.sizes(),
              "sampling_mask_with_budget: probability must have the shape of budgets ",
              budgets.sizes(), ", got ",
              probability.defined() ? probability.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(k_len >= 0, "sampling_mask_with_budget: k_len must be >= 0, got ", k_len);
  const int64_t rows = budgets.size(0) * budgets.size(1) * budgets.size(2);
  const std::vector<int64_t> shape = {budgets.size(0), budgets.size(1), budgets.size(2), k_len};
  auto counts = budgets.reshape({rows}).to(torch::kLong);
  TORCH_CHECK(rows == 0 || counts.min().item<int64_t>() >= 0,
              "sampling_mask_with_budget: budgets must be >= 0, got ", counts.min().item<int64_t>());
  const int64_t total = rows == 0 ? 0 : counts.sum().item<int64_t>();
  auto opts = counts.options();
  auto ptr = torch::cat({torch::zeros({1}, opts), counts.cumsum(0)});
  if (total == 0) {
    return Mask::from_indices(shape, torch::empty({0}, opts), ptr, {}, dtype);
  }
  TORCH_CHECK(0 <= start && start < end && end <= k_len,
              "sampling_mask_with_budget: need 0 <= start < end <= k_len, got start = ", start,
              ", end = ", end, ", k_len = ", k_len);
  // One draw for every entry of every row, as upstream (the same stream of the global
  // generator).
  auto cols = torch::randint(start, end, {total}, opts);
  auto row_of = torch::repeat_interleave(torch::arange(rows, opts), counts, /*dim=*/0, total);
  auto data = probability.reshape({rows}).index({row_of});
  return Mask::from_indices(shape, cols + row_of * k_len, ptr, data, dtype);
}

AdaptiveSamplingMasker::AdaptiveSamplingMasker(AdaptiveSamplingMaskerOptions options)
    : options_(options) {
  const MaskerSize base = options_.base_rate_sampling();
  if (base.is_fraction()) {
    TORCH_CHECK(base.value() >= 0.0 && base.value() < 1.0,
                "AdaptiveSamplingMasker: base_rate_sampling must be in [0, 1) as a fraction, got ",
                base.str());
  } else {
    TORCH_CHECK(base.value() >= 0.0,
                "AdaptiveSamplingMasker: base_rate_sampling must be >= 0 as a count, got ",
                base.str());
  }
  TORCH_CHECK(options_.epsilon() > 0.0 && options_.epsilon() < 1.0,
              "AdaptiveSamplingMasker: epsilon must be in (0, 1), got ", options_.epsilon());
  TORCH_CHECK(options_.delta() > 0.0 && options_.delta() < 1.0,
              "AdaptiveSamplingMasker: delta must be in (0, 1), got ", options_.delta());
  const std::pair<const char*, MaskerSize> offsets[] = {{"init_offset", options_.init_offset()},
                                                         {"local_offset", options_.local_offset()}};
  for (const auto& [name, size] : offsets) {
    if (size.is_fraction()) {
      TORCH_CHECK(size.value() >= 0.0 && size.value() <= 1.0, "AdaptiveSamplingMasker: ", name,
                  " must be in [0, 1] as a fraction, got ", size.str());
    } else {
      TORCH_CHECK(size.value() >= 0.0, "AdaptiveSamplingMasker: ", name,
                  " must be >= 0 as a count, got ", size.str());
    }
  }
  // scipy.stats.norm.ppf(1 - delta), computed once.
  delta_ppf_ =
      torch::special::ndtri(torch::tensor(1.0 - options_.delta(), torch::kDouble)).item<double>();
}

MaskerPtr AdaptiveSamplingMasker::from_config(const MaskerConfig& config) {
  return std::make_shared<AdaptiveSamplingMasker>(AdaptiveSamplingMaskerOptions(
      config.size("base_rate_sampling"), config.number("epsilon"), config.number("delta"),
      config.size("init_offset"), config.size("local_offset")));
}

AdaptiveSamplingMasker::SamplingRange AdaptiveSamplingMasker::sampling_range(
    int64_t k_len) const {
  const int64_t start = options_.init_offset().resolve(k_len);
  const int64_t end = k_len - options_.local_offset().resolve(k_len);
  return {start, end, end - start};
}

int64_t AdaptiveSamplingMasker::base_sample_count(int64_t range_size) const {
  // At least 2: the base sample estimates a standard deviation.
  return std::max<int64_t>(2, options_.base_rate_sampling().resolve(range_size));
}

torch::Tensor AdaptiveSamplingMasker::adaptive_budget(const torch::Tensor& sigma,
                                                      const torch::Tensor& denominator,
                                                      int64_t range_size) const {
  // Upstream's operation order, so that the truncation to an integer agrees bit for bit.
  auto allowable = denominator.mul(options_.epsilon()).clamp_min(1e-8);
  auto numerator = sigma.mul(delta_ppf_).mul(static_cast<double>(range_size));
  return numerator.div(allowable)
      .pow(2)
      .clamp(1.0, static_cast<double>(range_size))
      .to(torch::kLong);
}

torch::Tensor AdaptiveSamplingMasker::exp_scores(const MaskerInputs& in) {
  auto s = in.raw_scores().mul(in.scaling);
  if (in.attention_mask.defined()) s = s + in.attention_mask.to(s.scalar_type());
  auto m = std::get<0>(s.max(-1, /*keepdim=*/true));
  // A query whose keys are all masked (-inf) gets zeros, not upstream's NaN (-inf - -inf).
  m = m.masked_fill(m.isinf(), 0.0);
  return (s - m).exp();
}

Mask AdaptiveSamplingMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  if (options_.base_rate_sampling().value() == 0.0) return previous;
  const auto shape = in.mask_shape();
  const SamplingRange range = sampling_range(in.k_len);
  if (range.size < 2) return Mask::full(shape, previous.dtype(), in.queries.device());
  auto e = exp_scores(in);
  auto static_den = previous.row_sum_inverse(e);
  // 1. The base sample: sigma and the sampled part of the denominator (duplicates collapse).
  const int64_t n_b = base_sample_count(range.size);
  auto base_cols = torch::randint(range.start, range.end, {in.batch, in.heads, in.q_len, n_b},
                                  e.options().dtype(torch::kLong));
  auto sigma = e.gather(-1, base_cols).std(-1, /*unbiased=*/true, /*keepdim=*/true).clamp_min(1e-8);
  auto base_data = torch::full(base_cols.sizes(),
                               static_cast<double>(n_b) / static_cast<double>(range.size),
                               e.options());
  Mask base = Mask::from_row_wise(shape, base_cols, base_data, previous.dtype(),
                                  /*use_padding=*/false, /*sparse=*/false);
  auto den = static_den + base.row_sum_inverse(e);
  // 2. The budget.
  auto budget = adaptive_budget(sigma, den, range.size).clamp(n_b, range.size);
  // Upstream's budget / R: a float32 true division, then the mask's dtype.
  auto probability = budget.to(torch::kFloat).div(static_cast<double>(range.size))
                         .to(previous.dtype());
  // 3. The adaptive draw; the base sample is not kept.
  Mask drawn = without_duplicates(sampling_mask_with_budget(
      budget, probability, in.k_len, range.start, range.end, previous.dtype()));
  return previous.is_empty() ? drawn : previous.merge(drawn);
}

}  // namespace sparse
}  // namespace attnkit
