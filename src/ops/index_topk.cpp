#include "ops/index_topk.h"

#include "kernels/indexer/params.h"

#include <torch/torch.h>

namespace attnkit {
namespace ops {

using functional::IndexTopkOptions;

void check_index_inputs(const char* fn,
                        const torch::Tensor& q,
                        const torch::Tensor& k,
                        const torch::Tensor& w,
                        const IndexTopkOptions& o) {
  TORCH_CHECK(q.defined() && q.dim() == 5, fn, ": expected q of shape [B, G, Tq, Hi, Di], got ",
              q.defined() ? q.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(k.defined() && k.dim() == 3 && k.size(0) == q.size(0) && k.size(2) == q.size(4), fn,
              ": expected k of shape [B, Tk, Di] = [", q.size(0), ", Tk, ", q.size(4), "], got ",
              k.defined() ? k.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(q.is_floating_point() && k.scalar_type() == q.scalar_type(), fn,
              ": expected floating-point q and k of one dtype, got ", q.scalar_type(), " and ",
              k.scalar_type());
  if (w.defined()) {
    TORCH_CHECK(w.sizes() == q.sizes().slice(0, 4), fn,
                ": expected w of shape [B, G, Tq, Hi] = ", q.sizes().slice(0, 4), ", got ",
                w.sizes());
    TORCH_CHECK(w.is_floating_point(), fn, ": expected floating-point w, got ", w.scalar_type());
  }
  TORCH_CHECK(o.top_k() > 0, fn, ": top_k must be positive, got ", o.top_k());
  TORCH_CHECK(o.block_size() > 0, fn, ": block_size must be positive, got ", o.block_size());
  TORCH_CHECK(o.index_dtype() == torch::kLong || o.index_dtype() == torch::kInt, fn,
              ": index_dtype must be Long or Int, got ", o.index_dtype());
  const torch::Tensor& m = o.mask();
  if (m.defined()) {
    const int64_t Tq = q.size(2), Tk = k.size(1);
    const bool shape_ok =
        (m.dim() == 2 || (m.dim() == 3 && (m.size(0) == q.size(0) || m.size(0) == 1))) &&
        m.size(-2) == Tq && m.size(-1) == Tk;
    TORCH_CHECK(shape_ok && m.scalar_type() == torch::kBool, fn,
                ": expected a bool mask of shape [Tq, Tk] or [B, Tq, Tk] = [", q.size(0), ", ", Tq,
                ", ", Tk, "], got ", m.scalar_type(), " ", m.sizes());
  }
  const torch::Tensor& lim = o.key_limit();
  if (lim.defined()) {
    TORCH_CHECK(lim.dim() == 1 && lim.size(0) == q.size(2) && lim.scalar_type() == torch::kLong, fn,
                ": expected an int64 key_limit of shape [Tq] = [", q.size(2), "], got ",
                lim.scalar_type(), " ", lim.sizes());
    TORCH_CHECK(lim.device() == q.device(), fn, ": expected key_limit on ", q.device(), ", got ",
                lim.device());
  }
}

bool index_topk_fused_supported(const torch::Tensor& q) {
  return q.device().is_cpu() &&
         (q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kBFloat16);
}

torch::Tensor index_topk_fused(const torch::Tensor& q,
                               const torch::Tensor& k,
                               const torch::Tensor& w,
                               const IndexTopkOptions& o) {
  const int64_t B = q.size(0), G = q.size(1), Tq = q.size(2), Tk = k.size(1);
  torch::Tensor out = torch::full({B, G, Tq, o.top_k()}, -1, q.options().dtype(o.index_dtype()));
  if (out.numel() == 0 || Tk == 0) return out;

  kernels::indexer::IndexTopkParams p;
  p.dtype = q.scalar_type() == torch::kBFloat16 ? kernels::indexer::IndexDtype::kBFloat16
                                                : kernels::indexer::IndexDtype::kFloat32;
  p.batch_size = B, p.num_groups = G, p.seq_len_q = Tq, p.seq_len_kv = Tk;
  p.num_heads = q.size(3), p.head_dim = q.size(4), p.top_k = o.top_k();
  p.block_size = o.block_size();
  p.q = q.data_ptr();
  p.q_stride_b = q.stride(0), p.q_stride_g = q.stride(1), p.q_stride_t = q.stride(2);
  p.q_stride_h = q.stride(3), p.q_stride_d = q.stride(4);
  p.k = k.data_ptr();
  p.k_stride_b = k.stride(0), p.k_stride_t = k.stride(1), p.k_stride_d = k.stride(2);
  torch::Tensor wf;
  if (w.defined()) {
    wf = w.to(torch::kFloat);
    p.maybe_w = wf.data_ptr<float>();
    p.w_stride_b = wf.stride(0), p.w_stride_g = wf.stride(1), p.w_stride_t = wf.stride(2);
    p.w_stride_h = wf.stride(3);
  }
  torch::Tensor keep;
  if (o.mask().defined()) {
    keep = (o.mask().dim() == 2 ? o.mask().unsqueeze(0) : o.mask()).expand({B, Tq, Tk});
    p.maybe_keep = reinterpret_cast<const uint8_t*>(keep.data_ptr<bool>());
    p.keep_stride_b = keep.stride(0), p.keep_stride_q = keep.stride(1);
    p.keep_stride_k = keep.stride(2);
  }
  torch::Tensor key_limit;
  if (o.key_limit().defined()) {
    key_limit = o.key_limit().contiguous();
    p.maybe_key_limit = key_limit.data_ptr<int64_t>();
  }
  p.scale = static_cast<float>(o.scale());
  p.relu = o.relu();
  p.causal = o.causal();
  if (o.index_dtype() == torch::kInt) {
    p.out32 = out.data_ptr<int32_t>();
  } else {
    p.out = out.data_ptr<int64_t>();
  }
  torch::NoGradGuard no_grad;
  kernels::indexer::index_topk(p);
  return out;
}

}  // namespace ops
}  // namespace attnkit
