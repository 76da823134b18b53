#include <attnkit/sparse/research_attention.h>

#include <attnkit/functional/backend.h>
#include <attnkit/functional/dot_product_attention.h>
#include <attnkit/functional/gather_attention.h>

#include <torch/torch.h>

#include <limits>

namespace attnkit {
namespace sparse {

namespace {

constexpr double kInverseEps = 1e-6;  // as Mask::apply_inverse

void check_call(const char* fn,
                const torch::Tensor& q,
                const torch::Tensor& k,
                const torch::Tensor& v,
                const Mask& mask,
                const torch::Tensor& attention_mask) {
  const std::vector<int64_t> shape = sparse::check_call(fn, q, k, v, attention_mask);
  TORCH_CHECK(mask.shape() == shape, fn, ": mask must be ", torch::IntArrayRef(shape), ", got ",
              torch::IntArrayRef(mask.shape()));
}

torch::Tensor sliced(const torch::Tensor& attention_mask, int64_t k_len) {
  return attention_mask.defined() ? attention_mask.narrow(3, 0, k_len) : attention_mask;
}

}  // namespace

torch::Tensor dense_attention(const torch::Tensor& queries,
                              const torch::Tensor& keys,
                              const torch::Tensor& values,
                              const torch::Tensor& attention_mask,
                              double scaling) {
  sparse::check_call("dense_attention", queries, keys, values, attention_mask);
  auto options = DotProductAttentionOptions().scale(scaling);
  if (attention_mask.defined()) {
    options.bias(sliced(attention_mask, keys.size(2)).to(queries.scalar_type()));
  }
  return functional::dot_product_attention(queries, keys, values, options)
      .output.transpose(1, 2);
}

torch::Tensor masked_attention_reference(const torch::Tensor& queries,
                                         const torch::Tensor& keys,
                                         const torch::Tensor& values,
                                         const Mask& mask,
                                         const torch::Tensor& attention_mask,
                                         double scaling,
                                         double dropout,
                                         torch::Tensor* weights) {
  check_call("masked_attention_reference", queries, keys, values, mask, attention_mask);
  const int64_t Tk = keys.size(2), G = queries.size(1) / keys.size(1);
  const auto compute = queries.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto repeat = [&](const torch::Tensor& t) {
    auto c = t.to(compute);
    return G == 1 ? c : c.repeat_interleave(G, /*dim=*/1);
  };
  auto k = repeat(keys), v = repeat(values);
  auto s = torch::matmul(queries.to(compute), k.transpose(-2, -1)) * scaling;  // [B, H, Tq, Tk]
  if (attention_mask.defined()) s = s + sliced(attention_mask, Tk).to(compute);
  auto m = std::get<0>(s.max(-1, /*keepdim=*/true));
  m = m.masked_fill(m.isinf(), 0.0);  // a row of -inf only: exp gives zeros, not NaN
  auto e = mask.apply_inverse((s - m).exp());
  auto den = e.sum(-1, /*keepdim=*/true);
  auto p = e / torch::where(den > 0, den, torch::ones_like(den));
  if (dropout > 0.0) p = torch::dropout(p, dropout, /*train=*/true);
  if (weights != nullptr) *weights = p.to(queries.scalar_type());
  auto out = torch::matmul(p, v);  // [B, H, Tq, Dv]
  return out.transpose(1, 2).to(queries.scalar_type());
}

torch::Tensor masked_attention(const torch::Tensor& queries,
                               const torch::Tensor& keys,
                               const torch::Tensor& values,
                               const Mask& mask,
                               const torch::Tensor& attention_mask,
                               double scaling) {
  check_call("masked_attention", queries, keys, values, mask, attention_mask);
  if (mask.is_full() || mask.is_empty()) {
    return dense_attention(queries, keys, values, attention_mask, scaling);
  }
  if (!functional::sparse_kernels_available(queries)) {
    return masked_attention_reference(queries, keys, values, mask, attention_mask, scaling);
  }
  const int64_t B = queries.size(0), H = queries.size(1), Tq = queries.size(2);
  const int64_t Hkv = keys.size(1), Tk = keys.size(2), G = H / Hkv;
  RowLists lists = row_lists(mask);  // [B, H, Tq, K]
  auto data = lists.data.to(torch::kFloat);
  auto active = data.ne(0) & lists.cols.ge(0);
  auto cols = lists.cols.masked_fill(active.logical_not(), -1);
  // 1 / (p + 1e-6) per listed key; an additive mask value a multiplies it by exp(a), shifted by
  // the row's largest listed a (a per-row factor cancels in the softmax).
  auto w = torch::where(active, (data + kInverseEps).reciprocal(), torch::zeros_like(data));
  if (attention_mask.defined()) {
    auto am = sliced(attention_mask, Tk).to(torch::kFloat).expand({B, H, Tq, Tk});
    auto a = am.gather(-1, cols.clamp_min(0))
                 .masked_fill(active.logical_not(), -std::numeric_limits<float>::infinity());
    auto top = std::get<0>(a.max(-1, /*keepdim=*/true));
    top = top.masked_fill(top.isinf(), 0.0);
    w = w * (a - top).exp();
    cols = cols.masked_fill(w.le(0), -1);
  }
  const int64_t K = cols.size(-1);
  // Query head h = g + G * kv reads kv head kv: the G heads of a group become G * Tq queries.
  auto q = queries.reshape({B, Hkv, G * Tq, queries.size(3)});
  auto r = functional::gather_attention(
      q, keys, values, cols.reshape({B, Hkv, G * Tq, K}), w.reshape({B, Hkv, G * Tq, K}),
      functional::GatherAttentionOptions().scale(scaling));
  return r.output.view({B, H, Tq, values.size(3)}).transpose(1, 2);
}

// ---- ResearchAttention --------------------------------------------------------------------

ResearchAttention::ResearchAttention(std::vector<MaskerPtr> maskers) : maskers_(std::move(maskers)) {
  int sampling = 0;
  for (const auto& m : maskers_) {
    TORCH_CHECK(m != nullptr, "ResearchAttention: a masker is null");
    if (m->kind() == MaskerKind::kSampling) ++sampling;
  }
  TORCH_CHECK(sampling <= 1, "ResearchAttention: at most one sampling masker is allowed, got ",
              sampling);
}

ResearchAttention ResearchAttention::from_json(const std::string& json_array) {
  return ResearchAttention(make_maskers(json_array));
}

Mask ResearchAttention::build_mask(const torch::Tensor& queries,
                                   const torch::Tensor& keys,
                                   const torch::Tensor& values,
                                   const torch::Tensor& attention_mask,
                                   double scaling,
                                   double dropout,
                                   MaskerState& state,
                                   std::optional<int64_t> layer_idx) const {
  TORCH_CHECK(queries.defined() && queries.dim() == 4 && keys.defined() && keys.dim() == 4,
              "ResearchAttention: queries and keys must be 4-D, got ",
              queries.defined() ? queries.sizes() : torch::IntArrayRef{}, " and ",
              keys.defined() ? keys.sizes() : torch::IntArrayRef{});
  const auto dtype = torch::isFloatingType(queries.scalar_type()) ? queries.scalar_type()
                                                                   : torch::kFloat;
  Mask mask = Mask::empty({queries.size(0), queries.size(1), queries.size(2), keys.size(2)},
                          dtype, queries.device());
  for (const auto& masker : maskers_) {
    mask = masker->add_mask(keys, queries, values, attention_mask, scaling, dropout, state, mask,
                            layer_idx);
  }
  return mask;
}

ResearchAttentionResult ResearchAttention::custom_attention(const torch::Tensor& queries,
                                                            const torch::Tensor& keys,
                                                            const torch::Tensor& values,
                                                            const torch::Tensor& attention_mask,
                                                            double scaling,
                                                            double dropout,
                                                            MaskerState& state,
                                                            std::optional<int64_t> layer_idx,
                                                            bool need_weights,
                                                            bool training) const {
  ResearchAttentionResult r{{}, {}, build_mask(queries, keys, values, attention_mask, scaling,
                                               dropout, state, layer_idx)};
  const double p = training ? dropout : 0.0;
  if (need_weights || p > 0.0) {
    r.output = masked_attention_reference(queries, keys, values, r.mask, attention_mask, scaling,
                                          p, need_weights ? &r.weights : nullptr);
  } else {
    r.output = masked_attention(queries, keys, values, r.mask, attention_mask, scaling);
  }
  return r;
}

}  // namespace sparse
}  // namespace attnkit
