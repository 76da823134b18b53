#include <attnkit/functional/index_topk.h>

#include <attnkit/functional/flex_attention.h>

#include "ops/index_topk.h"

#include <torch/torch.h>

#include <limits>

namespace attnkit {
namespace functional {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Keys visible to each query: [B or 1, Tq, Tk] bool, or undefined when every key is.
torch::Tensor visible_keys(int64_t Tq, int64_t Tk, const IndexTopkOptions& o) {
  torch::Tensor visible;
  if (o.causal()) {
    torch::Tensor i = torch::arange(Tq, torch::kLong).add(Tk - Tq).view({Tq, 1});
    visible = (torch::arange(Tk, torch::kLong).view({1, Tk}) <= i).unsqueeze(0);
  }
  if (o.mask().defined()) {
    torch::Tensor m = o.mask().dim() == 2 ? o.mask().unsqueeze(0) : o.mask();
    visible = visible.defined() ? visible & m : m;
  }
  if (o.key_limit().defined()) {
    torch::Tensor prefix =
        (torch::arange(Tk, o.key_limit().options()).view({1, Tk}) < o.key_limit().view({Tq, 1}))
            .unsqueeze(0);
    visible = visible.defined() ? visible & prefix : prefix;
  }
  return visible;
}

}  // namespace

torch::Tensor index_topk_reference(const torch::Tensor& q,
                                   const torch::Tensor& k,
                                   const torch::Tensor& w,
                                   const IndexTopkOptions& o) {
  ops::check_index_inputs("index_topk_reference", q, k, w, o);
  const int64_t B = q.size(0), G = q.size(1), Tq = q.size(2), Tk = k.size(1);
  const int64_t bs = o.block_size(), U = (Tk + bs - 1) / bs, K = o.top_k();
  const auto compute = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  torch::NoGradGuard no_grad;
  // logits [B, G, Tq, Hi, Tk]; scores [B, G, Tq, Tk] = sum_h w act(logits)
  torch::Tensor logits = torch::matmul((q.to(compute) * o.scale()).flatten(2, 3),
                                       k.to(compute).transpose(1, 2).unsqueeze(1))
                             .view({B, G, Tq, q.size(3), Tk});
  if (o.relu()) logits = torch::relu(logits);
  torch::Tensor weights =
      w.defined() ? w.to(compute) : torch::ones(q.sizes().slice(0, 4), logits.options());
  torch::Tensor scores = torch::matmul(weights.unsqueeze(3), logits).squeeze(3);
  torch::Tensor visible = visible_keys(Tq, Tk, o);
  if (visible.defined()) scores = scores.masked_fill(visible.unsqueeze(1).logical_not(), kNegInf);
  // Units: the max over each block's keys (the tail padded with -inf).
  if (bs > 1) {
    scores = torch::constant_pad_nd(scores, {0, U * bs - Tk}, kNegInf);
    scores = std::get<0>(scores.view({B, G, Tq, U, bs}).max(-1));
  }
  // The first K of a stable descending sort; -inf units are unused slots.
  const int64_t Kc = std::min(K, U);
  torch::Tensor order =
      std::get<1>(torch::sort(scores, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  torch::Tensor top = order.narrow(-1, 0, Kc);
  torch::Tensor used = scores.gather(-1, top) > kNegInf;
  // Ascending unit order with the unused slots last.
  torch::Tensor ascending = std::get<0>(torch::sort(top.masked_fill(used.logical_not(), U), -1));
  top = ascending.masked_fill(ascending == U, -1);
  if (Kc < K) top = torch::constant_pad_nd(top, {0, K - Kc}, -1);
  return top.to(o.index_dtype());
}

torch::Tensor index_topk(const torch::Tensor& q,
                         const torch::Tensor& k,
                         const torch::Tensor& w,
                         const IndexTopkOptions& o) {
  ops::check_index_inputs("index_topk", q, k, w, o);
  if (!fused_backend_selected() || !ops::index_topk_fused_supported(q)) {
    return index_topk_reference(q, k, w, o);
  }
  return ops::index_topk_fused(q, k, w, o);
}

}  // namespace functional
}  // namespace attnkit
