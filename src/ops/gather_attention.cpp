// Op layer of gather_attention: validation, allocation, the GatherParams the kernels see, and
// the autograd Function over the fused forward and backward (kernels/gather).

#include "ops/gather_attention.h"

#include <attnkit/functional/dot_product_attention.h>

#include "kernels/gather/params.h"

#include <torch/torch.h>

#include <limits>

namespace attnkit {
namespace ops {

using functional::GatherAttentionOptions;
using functional::GatherAttentionResult;

void check_gather_inputs(const char* fn,
                         const torch::Tensor& q,
                         const torch::Tensor& k,
                         const torch::Tensor& v,
                         const torch::Tensor& indices,
                         const torch::Tensor& weights,
                         const GatherAttentionOptions& o) {
  check_attention_inputs(fn, q, k, v, DotProductAttentionOptions());
  const int64_t B = q.size(0), Hkv = k.size(1), Tq = q.size(2);
  TORCH_CHECK(indices.dim() == 4 && indices.size(0) == B &&
                  (indices.size(1) == Hkv || indices.size(1) == 1) && indices.size(2) == Tq,
              fn, ": expected indices of shape [B, Hkv or 1, Tq, K] = [", B, ", ", Hkv, " or 1, ",
              Tq, ", K], got ", indices.sizes());
  TORCH_CHECK(!indices.is_floating_point() && !indices.is_complex() &&
                  indices.scalar_type() != torch::kBool,
              fn, ": expected integer indices, got ", indices.scalar_type());
  TORCH_CHECK(o.block_size() >= 1, fn, ": expected block_size >= 1, got ", o.block_size());
  if (indices.numel() > 0) {
    // One pass over the indices (they may be T x K long).
    const auto range = torch::aminmax(indices);
    const int64_t lo = std::get<0>(range).item<int64_t>(), hi = std::get<1>(range).item<int64_t>();
    const int64_t units = (k.size(2) + o.block_size() - 1) / o.block_size();
    const char* bound = o.block_size() > 1 ? "number of key blocks" : "Tk";
    TORCH_CHECK(lo >= -1 && hi < units, fn, ": expected indices in [-1, ", bound, ") = [-1, ",
                units, "), got values in [", lo, ", ", hi, "]");
  }
  TORCH_CHECK(k.size(2) <= std::numeric_limits<int32_t>::max(), fn,
              ": expected at most 2^31 - 1 keys, got Tk = ", k.size(2));
  if (weights.defined()) {
    TORCH_CHECK(weights.sizes() == indices.sizes(), fn,
                ": expected weights of the shape of indices ", indices.sizes(), ", got ",
                weights.sizes());
    TORCH_CHECK(weights.is_floating_point(), fn, ": expected floating-point weights, got ",
                weights.scalar_type());
  }
  if (o.sinks().defined()) {
    TORCH_CHECK(o.sinks().dim() == 1 && o.sinks().size(0) == q.size(1), fn,
                ": expected sinks of shape [Hq] = [", q.size(1), "], got ", o.sinks().sizes());
    TORCH_CHECK(o.sinks().is_floating_point(), fn, ": expected floating-point sinks, got ",
                o.sinks().scalar_type());
  }
}

namespace {

using kernels::gather::GatherBackwardParams;
using kernels::gather::GatherParams;

// The kernels read int32 lists as they are and other integer types as int64.
torch::Tensor kernel_indices(const torch::Tensor& indices) {
  return indices.scalar_type() == torch::kInt ? indices : indices.to(torch::kLong);
}

struct Prepared {
  GatherParams params;
  torch::Tensor indices, weights, sinks;
};

// sinks: [Hq] or undefined; passed apart from `o` so that autograd sees it (o.sinks() is unset).
Prepared prepare(const torch::Tensor& q,
                 const torch::Tensor& k,
                 const torch::Tensor& v,
                 const torch::Tensor& indices,
                 const torch::Tensor& weights,
                 const torch::Tensor& sinks,
                 const GatherAttentionOptions& o) {
  Prepared prep;
  GatherParams& p = prep.params;
  p.dtype = q.scalar_type() == torch::kBFloat16 ? kernels::flash::FlashDtype::kBFloat16
                                                : kernels::flash::FlashDtype::kFloat32;
  p.batch_size = q.size(0), p.num_heads_q = q.size(1), p.num_heads_kv = k.size(1);
  p.seq_len_q = q.size(2), p.seq_len_kv = k.size(2), p.head_dim = q.size(3);
  p.head_dim_v = v.size(3), p.num_keys = indices.size(3);
  p.q = q.data_ptr();
  p.q_stride_b = q.stride(0), p.q_stride_h = q.stride(1), p.q_stride_t = q.stride(2),
  p.q_stride_d = q.stride(3);
  p.k = k.data_ptr();
  p.k_stride_b = k.stride(0), p.k_stride_h = k.stride(1), p.k_stride_t = k.stride(2),
  p.k_stride_d = k.stride(3);
  p.v = v.data_ptr();
  p.v_stride_b = v.stride(0), p.v_stride_h = v.stride(1), p.v_stride_t = v.stride(2),
  p.v_stride_d = v.stride(3);
  // One list per query shared by the kv heads is read in place; with weights (whose gradient
  // is per list entry) it is expanded to one list per kv head.
  const int64_t Hkv = k.size(1);
  p.shared_lists = indices.size(1) == 1 && !weights.defined();
  const int64_t lists = p.shared_lists ? 1 : Hkv;
  prep.indices = kernel_indices(indices).expand({-1, lists, -1, -1}).contiguous();
  if (prep.indices.scalar_type() == torch::kInt) {
    p.indices32 = prep.indices.data_ptr<int32_t>();
  } else {
    p.indices = prep.indices.data_ptr<int64_t>();
  }
  if (weights.defined()) {
    prep.weights = weights.detach().to(torch::kFloat).expand({-1, Hkv, -1, -1}).contiguous();
    p.maybe_weights = prep.weights.data_ptr<float>();
  }
  if (sinks.defined()) {
    prep.sinks = sinks.detach().to(torch::kFloat).contiguous();
    p.maybe_sinks = prep.sinks.data_ptr<float>();
  }
  p.scale = static_cast<float>(o.scale().value_or(1.0 / std::sqrt(static_cast<double>(q.size(3)))));
  p.block_size = o.block_size();
  p.causal = o.causal();
  return prep;
}

GatherAttentionResult forward_op(const torch::Tensor& q,
                                 const torch::Tensor& k,
                                 const torch::Tensor& v,
                                 const torch::Tensor& indices,
                                 const torch::Tensor& weights,
                                 const torch::Tensor& sinks,
                                 const GatherAttentionOptions& o) {
  GatherAttentionResult r;
  const std::vector<int64_t> shape{q.size(0), q.size(1), q.size(2), v.size(3)};
  const bool empty_output = q.numel() == 0 || v.size(3) == 0;
  if (empty_output || indices.numel() == 0 || k.size(2) == 0) {
    r.output = torch::zeros(shape, q.options());
    r.lse = torch::full({q.size(0), q.size(1), q.size(2)}, -std::numeric_limits<float>::infinity(),
                        q.options().dtype(torch::kFloat));
    // no key anywhere: the lse is the sink's alone
    if (!empty_output && sinks.defined())
      r.lse.copy_(sinks.detach().to(torch::kFloat).view({1, -1, 1}).expand_as(r.lse));
    return r;
  }
  // The kernels write every output row and lse (zeros and -inf for rows without a key).
  r.output = torch::empty(shape, q.options());
  r.lse = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(torch::kFloat));
  Prepared prep = prepare(q, k, v, indices, weights, sinks, o);
  prep.params.out = r.output.data_ptr();
  prep.params.lse = r.lse.data_ptr<float>();
  kernels::gather::gather_forward(prep.params);
  return r;
}

struct GatherConfig : torch::CustomClassHolder {
  GatherAttentionOptions options;
  torch::Tensor indices;
};

class GatherAttentionFunction : public torch::autograd::Function<GatherAttentionFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                torch::Tensor q,
                                                torch::Tensor k,
                                                torch::Tensor v,
                                                torch::Tensor weights,
                                                torch::Tensor sinks,
                                                c10::intrusive_ptr<GatherConfig> config) {
    torch::Tensor w = weights.dim() == 4 ? weights : torch::Tensor();
    torch::Tensor sk = sinks.numel() > 0 ? sinks : torch::Tensor();
    GatherAttentionResult r = forward_op(q, k, v, config->indices, w, sk, config->options);
    ctx->save_for_backward({q, k, v, weights, sinks, r.output, r.lse});
    ctx->saved_data["config"] = c10::IValue::make_capsule(config);
    ctx->mark_non_differentiable({r.lse});
    return {r.output, r.lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    c10::intrusive_ptr<torch::CustomClassHolder> holder = ctx->saved_data["config"].toCapsule();
    const auto* config = static_cast<const GatherConfig*>(holder.get());
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const torch::Tensor &out = saved[5], &lse = saved[6];
    torch::Tensor w = saved[3].dim() == 4 ? saved[3] : torch::Tensor();
    torch::Tensor sinks = saved[4].numel() > 0 ? saved[4] : torch::Tensor();
    auto f32 = q.options().dtype(torch::kFloat);
    torch::Tensor dq = torch::zeros(q.sizes(), f32), dk = torch::zeros(k.sizes(), f32);
    torch::Tensor dv = torch::zeros(v.sizes(), f32), dw;
    // The kernel writes one weight gradient per kv head's list (prepare expands shared weights).
    if (w.defined() && ctx->needs_input_grad(3))
      dw = torch::zeros({w.size(0), k.size(1), w.size(2), w.size(3)}, f32);
    torch::Tensor dout = grad_outputs[0];
    if (dout.defined() && q.numel() > 0 && config->indices.numel() > 0 && k.size(2) > 0) {
      dout = dout.to(q.scalar_type()).contiguous();
      Prepared prep = prepare(q, k, v, config->indices, w, sinks, config->options);
      prep.params.out = out.data_ptr();
      prep.params.lse = lse.data_ptr<float>();
      GatherBackwardParams g;
      g.dout = dout.data_ptr();
      g.dq = dq.data_ptr<float>(), g.dk = dk.data_ptr<float>(), g.dv = dv.data_ptr<float>();
      if (dw.defined()) g.maybe_dweights = dw.data_ptr<float>();
      kernels::gather::gather_backward(prep.params, g);
    }
    torch::Tensor dsinks;
    if (sinks.defined() && ctx->needs_input_grad(4)) {
      // lse = log(sum_j w_j exp s_j + exp sink)  =>  dL/dsink_h = -sum_{b,i} exp(sink_h - lse) Di
      // with Di = dO . O (zero for rows without an lse, whose output is constant zero)
      torch::Tensor di = dout.defined() ? (dout.to(torch::kFloat) * out.to(torch::kFloat)).sum(-1)
                                        : torch::zeros_like(lse);
      torch::Tensor share = torch::exp(sinks.detach().to(torch::kFloat).view({1, -1, 1}) - lse);
      share = torch::where(torch::isneginf(lse), torch::zeros_like(share), share);
      dsinks = -(share * di).sum(torch::IntArrayRef{0, 2}).to(sinks.scalar_type());
    }
    return {dq.to(q.scalar_type()),
            dk.to(k.scalar_type()),
            dv.to(v.scalar_type()),
            dw.defined() ? dw.sum_to_size(w.sizes()).to(w.scalar_type()) : torch::Tensor(),
            dsinks,
            torch::Tensor()};
  }
};

}  // namespace

bool gather_fused_supported(const torch::Tensor& q) {
  return q.device().is_cpu() &&
         (q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kBFloat16);
}

GatherAttentionResult gather_attention_fused(const torch::Tensor& q,
                                             const torch::Tensor& k,
                                             const torch::Tensor& v,
                                             const torch::Tensor& indices,
                                             const torch::Tensor& weights,
                                             const GatherAttentionOptions& o) {
  auto config = c10::make_intrusive<GatherConfig>();
  config->options = o;
  config->options.sinks(torch::Tensor());  // travels as an input, so autograd tracks it
  config->indices = kernel_indices(indices).contiguous();
  // Function::apply cannot take an undefined tensor (LibTorch 1.13): empty placeholders.
  torch::Tensor w = weights.defined() ? weights : torch::empty({0});
  torch::Tensor sinks = o.sinks().defined() ? o.sinks() : torch::empty({0});
  // Key and value rows far apart (views of a fused qkv projection) would cost a TLB miss per
  // gathered row: the kernels read a packed copy (autograd routes the gradient through it).
  auto packed = [](const torch::Tensor& t) {
    return t.stride(2) == t.size(3) ? t : t.contiguous();
  };
  auto r = GatherAttentionFunction::apply(q, packed(k), packed(v), w, sinks, config);
  return GatherAttentionResult{r[0], r[1]};
}

}  // namespace ops
}  // namespace attnkit
