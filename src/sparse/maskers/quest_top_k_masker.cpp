#include <attnkit/sparse/learned_maskers.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace attnkit {
namespace sparse {

torch::Tensor pseudo_quantize(const torch::Tensor& x, int64_t bits) {
  TORCH_CHECK(bits >= 1 && bits <= 62, "pseudo_quantize: bits expected in [1, 62], got ", bits);
  TORCH_CHECK(x.is_floating_point() && x.dim() >= 1 && x.size(-1) >= 1,
              "pseudo_quantize: x expected a floating [*, n >= 1] tensor, got ", x.sizes());
  const double levels = std::ldexp(1.0, static_cast<int>(bits)) - 1.0;
  auto lo = std::get<0>(x.min(-1, /*keepdim=*/true));
  auto hi = std::get<0>(x.max(-1, /*keepdim=*/true));
  auto range = hi - lo;
  range = range.masked_fill(range.eq(0), 1.0);
  // The same operations in the same order as upstream, so results agree bit for bit.
  auto scale = levels / range;
  auto q = torch::round((x - lo) * scale).clamp(0.0, levels);
  return q / scale + lo;
}

QuestTopKMasker::QuestTopKMasker(QuestTopKMaskerOptions options) : options_(options) {
  TORCH_CHECK(options_.heavy_size().value() > 0, "QuestTopKMasker: heavy_size must be > 0, got ",
              options_.heavy_size().str());
  TORCH_CHECK(options_.page_size() > 0, "QuestTopKMasker: page_size must be > 0, got ",
              options_.page_size());
  TORCH_CHECK(options_.label_bits() > 0 && options_.label_bits() <= 16,
              "QuestTopKMasker: label_bits must be in range (0, 16], got ",
              options_.label_bits());
}

MaskerPtr QuestTopKMasker::from_config(const MaskerConfig& config) {
  QuestTopKMaskerOptions options(config.size("heavy_size"), config.integer("page_size"));
  options.label_bits(config.integer("label_bits", 16));
  return std::make_shared<QuestTopKMasker>(options);
}

std::pair<torch::Tensor, torch::Tensor> QuestTopKMasker::page_bounds(
    const torch::Tensor& keys) const {
  TORCH_CHECK(keys.dim() == 4 && keys.size(2) >= 1,
              "QuestTopKMasker: keys expected [B, Hkv, Tk >= 1, D], got ", keys.sizes());
  const auto dtype = keys.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const int64_t B = keys.size(0), H = keys.size(1), T = keys.size(2), D = keys.size(3);
  const int64_t ps = options_.page_size();
  const int64_t P = (T + ps - 1) / ps;
  auto k = keys.to(dtype);
  // Pad the last partial page with +inf for the min and -inf for the max (neutral).
  const int64_t pad = P * ps - T;
  const double inf = std::numeric_limits<double>::infinity();
  auto pad_with = [&](double v) {
    if (pad == 0) return k;
    return torch::cat({k, torch::full({B, H, pad, D}, v, k.options())}, 2);
  };
  auto lo = pad_with(inf).view({B, H, P, ps, D}).amin(3);
  auto hi = pad_with(-inf).view({B, H, P, ps, D}).amax(3);
  if (options_.label_bits() < 16) {
    // Each page's min vector and max vector, quantised across the D channels.
    lo = pseudo_quantize(lo, options_.label_bits());
    hi = pseudo_quantize(hi, options_.label_bits());
  }
  return {lo, hi};
}

Mask QuestTopKMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const int64_t k = options_.heavy_size().resolve(in.k_len);
  const auto shape = in.mask_shape();
  if (in.k_len <= std::max<int64_t>(1, k)) {
    return Mask::full(shape, previous.dtype(), in.queries.device());
  }
  const int64_t B = in.batch, H = in.heads, Hkv = in.kv_heads, Q = in.q_len, T = in.k_len;
  const int64_t G = H / Hkv, ps = options_.page_size(), P = (T + ps - 1) / ps;
  auto [page_min, page_max] = page_bounds(in.keys);
  const int64_t D = page_min.size(3);
  // Bounds per query head (head h reads kv head h / G).
  auto per_head = [&](const torch::Tensor& t) {
    return t.unsqueeze(2).expand({B, Hkv, G, P, D}).reshape({B, H, P, D});
  };
  // sum_d max(q_d * a_d, q_d * b_d) = q+ . max(a, b) + q- . min(a, b), with q+ = max(q, 0) and
  // q- = min(q, 0): two matmuls instead of a [B, H, Tq, P, D] product (the quantised min may
  // exceed the quantised max, hence max(a, b) and min(a, b)).
  auto upper = per_head(torch::maximum(page_min, page_max)).transpose(-2, -1);
  auto lower = per_head(torch::minimum(page_min, page_max)).transpose(-2, -1);
  auto q = in.queries.to(page_min.scalar_type());
  auto scores = torch::matmul(q.clamp_min(0), upper) + torch::matmul(q.clamp_max(0), lower);

  torch::Tensor allowed;  // [B, 1 or H, Tq, Tk], 1 where the additive mask is >= 0
  if (in.attention_mask.defined()) {
    allowed = in.attention_mask.ge(0).to(scores.scalar_type());
    // A page is valid when any of its tokens is allowed, in any head of a per-head mask.
    auto padded = torch::constant_pad_nd(allowed, {0, P * ps - T}, 0.0);
    auto valid = padded.amax(1, /*keepdim=*/true).view({B, 1, Q, P, ps}).amax(-1).gt(0);
    scores = scores.masked_fill(valid.logical_not(),
                                scores.scalar_type() == torch::kDouble
                                    ? std::numeric_limits<double>::lowest()
                                    : std::numeric_limits<float>::lowest());
  }
  const int64_t k_pages = std::max<int64_t>(1, std::min(P, std::max<int64_t>(3, k / ps)));
  auto pages = std::get<1>(scores.topk(k_pages, -1));  // [B, H, Tq, k_pages]

  auto dtype = previous.dtype();
  auto opts = torch::TensorOptions().dtype(dtype).device(in.queries.device());
  auto chosen = torch::zeros({B, H, Q, P}, opts).scatter_(-1, pages, 1.0);
  auto tokens = chosen.repeat_interleave(ps, -1).narrow(-1, 0, T);
  auto dense = torch::maximum(previous.dense().to(opts).clamp(0.0, 1.0), tokens);
  if (allowed.defined()) dense = dense * allowed.to(dtype);
  return Mask::from_dense(shape, dense, dtype);
}

}  // namespace sparse
}  // namespace attnkit
