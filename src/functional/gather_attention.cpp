#include <attnkit/functional/gather_attention.h>

#include <attnkit/functional/dot_product_attention.h>
#include <attnkit/functional/flex_attention.h>

#include "ops/gather_attention.h"

#include <torch/torch.h>

#include <limits>

namespace attnkit {
namespace functional {

GatherAttentionResult gather_attention_reference(const torch::Tensor& q,
                                                 const torch::Tensor& k,
                                                 const torch::Tensor& v,
                                                 const torch::Tensor& indices,
                                                 const torch::Tensor& weights,
                                                 const GatherAttentionOptions& o) {
  ops::check_gather_inputs("gather_attention_reference", q, k, v, indices, weights, o);
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), Dv = v.size(3), G = Hq / Hkv;
  const int64_t bs = o.block_size(), K = indices.size(3) * bs;
  const auto compute = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const double scale = o.scale().value_or(1.0 / std::sqrt(static_cast<double>(D)));
  // Token lists [B, Hkv or 1, Tq, K]: the keys of each block (weights repeated), -1 past Tk
  // or (causal) after the query.
  torch::Tensor idx = indices.to(torch::kLong);
  torch::Tensor tok = (idx.unsqueeze(-1) * bs + torch::arange(bs, idx.options())).flatten(-2);
  torch::Tensor keep = idx.ge(0).repeat_interleave(bs, -1) & tok.lt(Tk);
  if (o.causal()) keep = keep & tok.le(torch::arange(Tq, idx.options()).add(Tk - Tq).view({Tq, 1}));
  idx = tok.masked_fill(keep.logical_not(), -1);
  torch::Tensor valid = idx >= 0;  // [B, Hkv or 1, Tq, K]
  torch::Tensor safe = idx.clamp_min(0);
  // Gathered keys and values: [B, Hkv, Tq, K, D].
  torch::Tensor kg = k.to(compute)
                         .unsqueeze(2)
                         .expand({B, Hkv, Tq, Tk, D})
                         .gather(3, safe.unsqueeze(-1).expand({B, Hkv, Tq, K, D}));
  torch::Tensor vg = v.to(compute)
                         .unsqueeze(2)
                         .expand({B, Hkv, Tq, Tk, Dv})
                         .gather(3, safe.unsqueeze(-1).expand({B, Hkv, Tq, K, Dv}));
  torch::Tensor qg = q.to(compute).reshape({B, Hkv, G, Tq, D});
  torch::Tensor s = torch::einsum("bhgtd,bhtkd->bhgtk", {qg, kg}) * scale;  // [B,Hkv,G,Tq,K]
  torch::Tensor w = weights.defined() ? weights.to(compute).repeat_interleave(bs, -1)
                                      : torch::ones_like(s.select(2, 0));
  torch::Tensor usable = (valid & (w > 0)).unsqueeze(2).expand_as(s);
  s = s.masked_fill(usable.logical_not(), -std::numeric_limits<double>::infinity());
  torch::Tensor m = std::get<0>(s.detach().max(-1, /*keepdim=*/true));  // [B, Hkv, G, Tq, 1]
  torch::Tensor sink;
  if (o.sinks().defined()) {
    sink = o.sinks().to(compute).view({1, Hkv, G, 1, 1});
    m = torch::maximum(m, sink.detach().expand_as(m));
  }
  m = m.masked_fill(m == -std::numeric_limits<double>::infinity(), 0.0);
  torch::Tensor e = torch::exp(s - m) * w.unsqueeze(2);  // w_j exp(s_j - m)
  torch::Tensor z = e.sum(-1, /*keepdim=*/true);
  if (sink.defined()) z = z + torch::exp(sink - m);  // the sink's share of the denominator
  torch::Tensor p = e / torch::where(z > 0, z, torch::ones_like(z));
  torch::Tensor out = torch::einsum("bhgtk,bhtkd->bhgtd", {p, vg});
  GatherAttentionResult r;
  r.output = out.reshape({B, Hq, Tq, Dv}).to(q.scalar_type());
  r.lse = (m + torch::log(z)).squeeze(-1).reshape({B, Hq, Tq});
  return r;
}

GatherAttentionResult gather_attention(const torch::Tensor& q,
                                       const torch::Tensor& k,
                                       const torch::Tensor& v,
                                       const torch::Tensor& indices,
                                       const torch::Tensor& weights,
                                       const GatherAttentionOptions& o) {
  ops::check_gather_inputs("gather_attention", q, k, v, indices, weights, o);
  if (!fused_backend_selected() || !ops::gather_fused_supported(q)) {
    return gather_attention_reference(q, k, v, indices, weights, o);
  }
  return ops::gather_attention_fused(q, k, v, indices, weights, o);
}

bool sparse_kernels_available(const torch::Tensor& q) {
  return fused_backend_selected() && ops::gather_fused_supported(q);
}

torch::Tensor causal_topk_attention(const torch::Tensor& q,
                                    const torch::Tensor& k,
                                    const torch::Tensor& v,
                                    const torch::Tensor& indices) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dv = v.size(3);
  TORCH_CHECK(k.size(2) == T, "causal_topk_attention: expected a whole-sequence prefill (Tk == ",
              "Tq = ", T, "), got Tk = ", k.size(2));
  TORCH_CHECK(indices.dim() == 4 && indices.size(0) == B && indices.size(1) == 1 &&
                  indices.size(2) == T,
              "causal_topk_attention: expected indices of shape [B, 1, Tq, K] = [", B, ", 1, ", T,
              ", K], got ", indices.sizes());
  const int64_t K = indices.size(3);
  const int64_t R = std::min(T, K + K / 2);
  torch::Tensor heads = torch::empty({B, T, H, Dv}, q.options());
  if (R > 0) {
    torch::Tensor lists = indices.narrow(2, 0, R).squeeze(1).to(torch::kLong);  // [B, R, K]
    torch::Tensor keep = torch::zeros({B, R, R + 1}, q.options().dtype(torch::kBool));
    keep.scatter_(2, lists.masked_fill(lists < 0, R), true);  // -1 -> a spare column
    auto opts = DotProductAttentionOptions().mask(keep.narrow(2, 0, R).unsqueeze(1));
    heads.narrow(1, 0, R).copy_(
        dot_product_attention(q.narrow(2, 0, R), k.narrow(2, 0, R), v.narrow(2, 0, R), opts)
            .output.transpose(1, 2));
  }
  if (R < T) {
    heads.narrow(1, R, T - R)
        .copy_(gather_attention(q.narrow(2, R, T - R), k, v, indices.narrow(2, R, T - R))
                   .output.transpose(1, 2));
  }
  return heads;
}

}  // namespace functional
}  // namespace attnkit
