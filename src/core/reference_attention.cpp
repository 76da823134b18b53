#include <attnkit/core/reference_attention.h>

#include <limits>

namespace attnkit {

namespace {

// Checks that `t` broadcasts to [B, Hq, Tq, Tk].
void check_broadcastable(const char* fn,
                         const char* name,
                         const torch::Tensor& t,
                         std::initializer_list<int64_t> target) {
  std::vector<int64_t> shape(target);
  TORCH_CHECK(t.dim() >= 2 && t.dim() <= 4, fn, ": expected ", name,
              " broadcastable to [B, Hq, Tq, Tk] = ", shape, ", got ", t.sizes());
  const int64_t offset = 4 - t.dim();
  for (int64_t i = 0; i < t.dim(); ++i) {
    const int64_t want = shape[offset + i];
    TORCH_CHECK(t.size(i) == want || t.size(i) == 1, fn, ": expected ", name,
                " broadcastable to [B, Hq, Tq, Tk] = ", shape, ", got ", t.sizes());
  }
}

}  // namespace

void check_attention_inputs(const char* fn,
                            const torch::Tensor& q,
                            const torch::Tensor& k,
                            const torch::Tensor& v,
                            const DotProductAttentionOptions& o) {
  TORCH_CHECK(q.dim() == 4, fn, ": expected query of shape [B, Hq, Tq, D], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4, fn, ": expected key of shape [B, Hkv, Tk, D], got ", k.sizes());
  TORCH_CHECK(v.dim() == 4, fn, ": expected value of shape [B, Hkv, Tk, Dv], got ", v.sizes());
  TORCH_CHECK(q.is_floating_point(), fn, ": expected a floating-point query, got ",
              q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), fn,
              ": expected query, key and value of one dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), fn,
              ": expected query, key and value on one device, got ", q.device(), ", ", k.device(),
              ", ", v.device());
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), fn,
              ": expected one batch size, got query ", q.size(0), ", key ", k.size(0), ", value ",
              v.size(0));
  TORCH_CHECK(k.size(3) == q.size(3), fn,
              ": expected key.size(-1) == query.size(-1) (head_dim), got ", k.size(3), " vs ",
              q.size(3));
  TORCH_CHECK(v.size(1) == k.size(1) && v.size(2) == k.size(2), fn,
              ": expected value [B, Hkv, Tk, Dv] to match key's heads and length, got value ",
              v.sizes(), " and key ", k.sizes());
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, fn, ": num_heads_q (", q.size(1),
              ") must be divisible by num_heads_kv (", k.size(1), ")");
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), Tk = k.size(2);
  if (o.sinks().defined()) {
    TORCH_CHECK(o.sinks().dim() == 1 && o.sinks().size(0) == Hq, fn,
                ": expected sinks of shape [Hq] = [", Hq, "], got ", o.sinks().sizes());
  }
  if (o.mask().defined()) {
    TORCH_CHECK(o.mask().scalar_type() == torch::kBool, fn,
                ": expected a bool mask (true = attend), got ", o.mask().scalar_type());
    check_broadcastable(fn, "mask", o.mask(), {B, Hq, Tq, Tk});
  }
  if (o.bias().defined()) {
    TORCH_CHECK(o.bias().is_floating_point(), fn, ": expected a floating-point bias, got ",
                o.bias().scalar_type());
    check_broadcastable(fn, "bias", o.bias(), {B, Hq, Tq, Tk});
  }
  if (o.window_left()) {
    TORCH_CHECK(*o.window_left() >= 0, fn, ": window_left must be >= 0, got ", *o.window_left());
  }
  if (o.window_right()) {
    TORCH_CHECK(*o.window_right() >= 0, fn, ": window_right must be >= 0, got ", *o.window_right());
  }
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, fn, ": dropout must be in [0, 1), got ",
              o.dropout());
}

torch::Tensor positional_keep_mask(int64_t seq_len_q,
                                   int64_t seq_len_kv,
                                   const DotProductAttentionOptions& o,
                                   torch::Device device) {
  if (!o.causal() && !o.window_left() && !o.window_right()) return {};
  auto i64 = torch::TensorOptions().dtype(torch::kLong).device(device);
  // pos(i) = i + (Tk - Tq): queries are the last Tq positions of the key sequence.
  torch::Tensor pos = torch::arange(seq_len_q, i64).unsqueeze(1) + (seq_len_kv - seq_len_q);
  torch::Tensor key = torch::arange(seq_len_kv, i64).unsqueeze(0);
  torch::Tensor keep = torch::ones({seq_len_q, seq_len_kv}, i64.dtype(torch::kBool));
  if (o.causal()) keep = keep & (key <= pos);
  if (o.window_left()) keep = keep & (key >= pos - *o.window_left());
  if (o.window_right()) keep = keep & (key <= pos + *o.window_right());
  return keep;
}

AttentionResult reference_attention(const torch::Tensor& q,
                                    const torch::Tensor& k,
                                    const torch::Tensor& v,
                                    const DotProductAttentionOptions& o) {
  check_attention_inputs("reference_attention", q, k, v, o);
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), Dv = v.size(3);
  const int64_t G = Hq / Hkv;
  const double scale = o.scale().value_or(1.0 / std::sqrt(static_cast<double>(D)));
  // opmath: float for reduced precision, double stays double.
  const auto compute = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  // Group query heads by kv head: q [B, Hkv, G, Tq, D] against k [B, Hkv, 1, Tk, D].
  torch::Tensor qg = q.to(compute).reshape({B, Hkv, G, Tq, D});
  torch::Tensor kg = k.to(compute).unsqueeze(2);
  torch::Tensor vg = v.to(compute).unsqueeze(2);
  torch::Tensor logits = torch::matmul(qg, kg.transpose(-1, -2)) * scale;  // [B, Hkv, G, Tq, Tk]
  logits = logits.reshape({B, Hq, Tq, Tk});
  if (o.bias().defined()) logits = logits + o.bias().to(compute);

  torch::Tensor keep = positional_keep_mask(Tq, Tk, o, q.device());
  if (o.mask().defined()) keep = keep.defined() ? keep & o.mask() : o.mask();
  if (keep.defined()) logits = logits.masked_fill(keep.logical_not(), neg_inf);

  // Row max over visible logits and the sink; a fully masked row (max -inf) uses 0 so that every
  // exp() below is exp(-inf) = 0 rather than NaN. The max only stabilises: detach it.
  torch::Tensor row_max = std::get<0>(logits.detach().max(-1, /*keepdim=*/true));  // [B,Hq,Tq,1]
  torch::Tensor sink;
  if (o.sinks().defined()) {
    sink = o.sinks().to(compute).view({1, Hq, 1, 1});
    row_max = torch::maximum(row_max, sink.detach().expand_as(row_max));
  }
  row_max = row_max.masked_fill(row_max == neg_inf, 0.0);
  torch::Tensor p = torch::exp(logits - row_max);  // [B, Hq, Tq, Tk]
  torch::Tensor denom = p.sum(-1, /*keepdim=*/true);
  if (sink.defined()) denom = denom + torch::exp(sink - row_max);
  // denom >= 1 unless the row is fully masked, in which case p is all zeros: divide by 1 instead.
  torch::Tensor safe_denom = torch::where(denom > 0, denom, torch::ones_like(denom));
  torch::Tensor weights = p / safe_denom;
  torch::Tensor lse = (row_max + torch::log(denom)).squeeze(-1);  // log(0) = -inf when empty

  torch::Tensor dropped =
      o.dropout() > 0 ? torch::dropout(weights, o.dropout(), /*train=*/true) : weights;
  torch::Tensor out = torch::matmul(dropped.reshape({B, Hkv, G, Tq, Tk}), vg);  // [B,Hkv,G,Tq,Dv]
  AttentionResult result;
  result.output = out.reshape({B, Hq, Tq, Dv}).to(q.scalar_type());
  result.lse = lse;
  if (o.need_weights()) result.weights = weights.to(q.scalar_type());
  return result;
}

}  // namespace attnkit
