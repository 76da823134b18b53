#include "ops/flex_attention.h"

#include "kernels/flash/kernel.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace attnkit {
namespace ops {

namespace {

using functional::FlexAttentionOptions;
using kernels::flash::FlashBackwardParams;
using kernels::flash::FlashDtype;
using kernels::flash::FlashParams;

DotProductAttentionOptions as_dpa(const FlexAttentionOptions& o) {
  DotProductAttentionOptions d;
  d.scale(o.scale()).causal(o.causal()).window_left(o.window_left()).window_right(o.window_right());
  d.sinks(o.sinks()).mask(o.mask()).bias(o.bias());
  return d;
}

// Asks Linux for transparent huge pages over a freshly allocated tensor's whole 2 MB pages, so
// the kernel's first writes fault it in 2 MB at a time rather than 4 KB: at T = 16384 the 4 KB
// faults of the 33 MB output cost ~14% of a sliding-window forward (perf, kernel time). A hint:
// nothing changes when THP is off or the call fails.
void advise_huge_pages(const torch::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (begin + t.nbytes()) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// t viewed as [B, Hq, Tq, Tk] with stride 0 on broadcast dims.
torch::Tensor expand4(const torch::Tensor& t, int64_t B, int64_t H, int64_t Tq, int64_t Tk) {
  torch::Tensor x = t;
  while (x.dim() < 4) x = x.unsqueeze(0);
  return x.expand({B, H, Tq, Tk});
}

// Block-mask metadata as int32 [B, Hq, nqb(, nkb)] views (stride 0 on broadcast dims).
torch::Tensor expand_meta(const torch::Tensor& t, int64_t B, int64_t H) {
  std::vector<int64_t> shape = t.sizes().vec();
  shape[0] = B;
  shape[1] = H;
  return t.expand(shape);
}

// Everything FlashParams needs that must outlive the kernel call.
struct Prepared {
  FlashParams params;
  std::vector<torch::Tensor> keep_alive;
};

Prepared prepare(const torch::Tensor& q,
                 const torch::Tensor& k,
                 const torch::Tensor& v,
                 const FlexAttentionOptions& o) {
  Prepared prep;
  FlashParams& p = prep.params;
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Tk = k.size(2);
  p.dtype = q.scalar_type() == torch::kBFloat16 ? FlashDtype::kBFloat16 : FlashDtype::kFloat32;
  p.batch_size = B;
  p.num_heads_q = Hq;
  p.num_heads_kv = k.size(1);
  p.seq_len_q = Tq;
  p.seq_len_kv = Tk;
  p.head_dim = D;
  p.head_dim_v = v.size(3);
  p.q = q.data_ptr();
  p.q_stride_b = q.stride(0), p.q_stride_h = q.stride(1), p.q_stride_t = q.stride(2),
  p.q_stride_d = q.stride(3);
  p.k = k.data_ptr();
  p.k_stride_b = k.stride(0), p.k_stride_h = k.stride(1), p.k_stride_t = k.stride(2),
  p.k_stride_d = k.stride(3);
  p.v = v.data_ptr();
  p.v_stride_b = v.stride(0), p.v_stride_h = v.stride(1), p.v_stride_t = v.stride(2),
  p.v_stride_d = v.stride(3);
  p.scale = static_cast<float>(o.scale().value_or(1.0 / std::sqrt(static_cast<double>(D))));
  p.causal = o.causal();
  p.window_left = o.window_left().value_or(-1);
  p.window_right = o.window_right().value_or(-1);
  p.softcap = static_cast<float>(o.softcap());
  auto f32 = [&](const torch::Tensor& t) {
    torch::Tensor c = t.detach().to(torch::kFloat).contiguous();
    prep.keep_alive.push_back(c);
    return c;
  };
  if (o.sinks().defined()) p.maybe_sinks = f32(o.sinks()).data_ptr<float>();
  if (o.alibi_slopes().defined()) p.maybe_alibi_slopes = f32(o.alibi_slopes()).data_ptr<float>();
  if (o.bias().defined()) {
    // Convert before expanding so a broadcast bias is never materialised.
    torch::Tensor bias = expand4(o.bias().detach().to(torch::kFloat), B, Hq, Tq, Tk);
    prep.keep_alive.push_back(bias);
    p.maybe_bias = bias.data_ptr<float>();
    p.bias_stride_b = bias.stride(0), p.bias_stride_h = bias.stride(1),
    p.bias_stride_q = bias.stride(2), p.bias_stride_k = bias.stride(3);
  }
  if (o.mask().defined()) {
    torch::Tensor keep = expand4(o.mask(), B, Hq, Tq, Tk);
    prep.keep_alive.push_back(keep);
    p.maybe_keep = reinterpret_cast<const uint8_t*>(keep.data_ptr<bool>());
    p.keep_stride_b = keep.stride(0), p.keep_stride_h = keep.stride(1),
    p.keep_stride_q = keep.stride(2), p.keep_stride_k = keep.stride(3);
  }
  if (o.block_mask()) {
    const functional::BlockMask& bm = *o.block_mask();
    torch::Tensor n = expand_meta(bm.kv_num_blocks, B, Hq);
    torch::Tensor idx = expand_meta(bm.kv_indices, B, Hq);
    prep.keep_alive.insert(prep.keep_alive.end(), {n, idx});
    p.maybe_kv_num_blocks = n.data_ptr<int32_t>();
    p.maybe_kv_indices = idx.data_ptr<int32_t>();
    p.kv_num_blocks_stride_b = n.stride(0), p.kv_num_blocks_stride_h = n.stride(1),
    p.kv_num_blocks_stride_q = n.stride(2);
    p.kv_indices_stride_b = idx.stride(0), p.kv_indices_stride_h = idx.stride(1),
    p.kv_indices_stride_q = idx.stride(2);
    if (bm.full_kv_num_blocks.defined()) {
      torch::Tensor fn = expand_meta(bm.full_kv_num_blocks, B, Hq);
      torch::Tensor fidx = expand_meta(bm.full_kv_indices, B, Hq);
      prep.keep_alive.insert(prep.keep_alive.end(), {fn, fidx});
      p.maybe_full_kv_num_blocks = fn.data_ptr<int32_t>();
      p.maybe_full_kv_indices = fidx.data_ptr<int32_t>();
      p.full_kv_num_blocks_stride_b = fn.stride(0), p.full_kv_num_blocks_stride_h = fn.stride(1),
      p.full_kv_num_blocks_stride_q = fn.stride(2);
      p.full_kv_indices_stride_b = fidx.stride(0), p.full_kv_indices_stride_h = fidx.stride(1),
      p.full_kv_indices_stride_q = fidx.stride(2);
    }
    p.block_q = bm.block_q;
    p.block_k = bm.block_k;
    p.num_kv_blocks = bm.kv_indices.size(3);
  }
  // The functors live in `o`, which outlives the kernel call.
  const functional::Mask& mask =
      o.block_mask() && o.block_mask()->mask_mod ? o.block_mask()->mask_mod : o.mask_mod();
  p.maybe_mask_row = mask.row;
  p.mask_functor = mask.functor.get();
  p.maybe_score_row = o.score_mod().row;
  p.score_functor = o.score_mod().functor.get();
  return prep;
}

// Checks that an int32 block-mask tensor is [B|1, H|1, nqb(, nkb)].
void check_meta(const char* fn,
                const char* name,
                const torch::Tensor& t,
                int64_t dims,
                int64_t B,
                int64_t Hq,
                int64_t nqb,
                int64_t nkb) {
  TORCH_CHECK(t.defined() && t.dim() == dims && t.scalar_type() == torch::kInt, fn,
              ": expected block_mask.", name, " an int32 tensor of ", dims, " dims, got ",
              t.defined() ? t.sizes().vec() : std::vector<int64_t>{}, " ",
              t.defined() ? t.scalar_type() : torch::kInt);
  TORCH_CHECK((t.size(0) == B || t.size(0) == 1) && (t.size(1) == Hq || t.size(1) == 1) &&
                  t.size(2) == nqb && (dims == 3 || t.size(3) == nkb),
              fn, ": expected block_mask.", name, " of shape [", B, "|1, ", Hq, "|1, ", nqb,
              dims == 4 ? ", " + std::to_string(nkb) : std::string(), "], got ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), fn, ": expected block_mask.", name, " on the CPU, got ",
              t.device());
}

}  // namespace

void check_flex_inputs(const char* fn,
                       const torch::Tensor& q,
                       const torch::Tensor& k,
                       const torch::Tensor& v,
                       const FlexAttentionOptions& o) {
  check_attention_inputs(fn, q, k, v, as_dpa(o));
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), Tk = k.size(2);
  TORCH_CHECK(o.softcap() >= 0, fn, ": softcap must be >= 0 (0 = off), got ", o.softcap());
  if (o.scale()) {
    TORCH_CHECK(std::isfinite(*o.scale()), fn, ": scale must be finite, got ", *o.scale());
  }
  if (o.alibi_slopes().defined()) {
    TORCH_CHECK(o.alibi_slopes().dim() == 1 && o.alibi_slopes().size(0) == Hq, fn,
                ": expected alibi_slopes of shape [Hq] = [", Hq, "], got ",
                o.alibi_slopes().sizes());
  }
  if (o.block_mask()) {
    const functional::BlockMask& bm = *o.block_mask();
    TORCH_CHECK(bm.block_q > 0 && bm.block_k > 0, fn,
                ": expected positive block_mask block sizes, got block_q ", bm.block_q,
                ", block_k ", bm.block_k);
    TORCH_CHECK(bm.seq_len_q == Tq && bm.seq_len_kv == Tk, fn,
                ": expected a block_mask built for (Tq, Tk) = (", Tq, ", ", Tk, "), got (",
                bm.seq_len_q, ", ", bm.seq_len_kv, ")");
    const int64_t nqb = (Tq + bm.block_q - 1) / bm.block_q;
    const int64_t nkb = (Tk + bm.block_k - 1) / bm.block_k;
    check_meta(fn, "kv_num_blocks", bm.kv_num_blocks, 3, B, Hq, nqb, nkb);
    check_meta(fn, "kv_indices", bm.kv_indices, 4, B, Hq, nqb, nkb);
    TORCH_CHECK(bm.full_kv_num_blocks.defined() == bm.full_kv_indices.defined(), fn,
                ": expected block_mask.full_kv_num_blocks and full_kv_indices both set or both "
                "unset");
    if (bm.full_kv_num_blocks.defined()) {
      check_meta(fn, "full_kv_num_blocks", bm.full_kv_num_blocks, 3, B, Hq, nqb, nkb);
      check_meta(fn, "full_kv_indices", bm.full_kv_indices, 4, B, Hq, nqb, nkb);
    }
    TORCH_CHECK(!o.mask_mod(), fn,
                ": expected the element mask in block_mask.mask_mod or options.mask_mod, not "
                "both; got both");
  }
}

bool fused_supported(const torch::Tensor& q) {
  return q.device().is_cpu() &&
         (q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kBFloat16);
}

functional::FlexAttentionResult flex_attention_forward(const torch::Tensor& q,
                                                       const torch::Tensor& k,
                                                       const torch::Tensor& v,
                                                       const FlexAttentionOptions& o) {
  TORCH_CHECK(fused_supported(q),
              "flex_attention: the fused kernels take float32 or bfloat16 "
              "CPU tensors, got ",
              q.scalar_type(), " on ", q.device());
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), Dv = v.size(3);
  functional::FlexAttentionResult result;
  result.output = torch::empty({B, Hq, Tq, Dv}, q.options());
  result.lse = torch::empty({B, Hq, Tq}, q.options().dtype(torch::kFloat));
  advise_huge_pages(result.output);
  if (q.numel() == 0 || result.output.numel() == 0) {
    result.output.zero_();
    result.lse.fill_(-std::numeric_limits<float>::infinity());
    return result;
  }
  Prepared prep = prepare(q, k, v, o);
  FlashParams& p = prep.params;
  const torch::Tensor& out = result.output;
  p.out = out.data_ptr();
  p.out_stride_b = out.stride(0), p.out_stride_h = out.stride(1), p.out_stride_t = out.stride(2),
  p.out_stride_d = out.stride(3);
  p.lse = result.lse.data_ptr<float>();
  p.lse_stride_b = result.lse.stride(0), p.lse_stride_h = result.lse.stride(1),
  p.lse_stride_t = result.lse.stride(2);
  if (k.size(2) == 0) {  // no keys: every row fully masked
    result.output.zero_();
    result.lse.fill_(-std::numeric_limits<float>::infinity());
    if (o.sinks().defined()) {
      result.lse.copy_(o.sinks().detach().to(torch::kFloat).view({1, Hq, 1}).expand_as(result.lse));
    }
    return result;
  }
  kernels::flash::flash_forward(p);
  return result;
}

FlexAttentionGrads flex_attention_backward(const torch::Tensor& dout,
                                           const torch::Tensor& q,
                                           const torch::Tensor& k,
                                           const torch::Tensor& v,
                                           const torch::Tensor& out,
                                           const torch::Tensor& lse,
                                           const FlexAttentionOptions& o,
                                           bool want_dsinks,
                                           bool want_dbias) {
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), Tk = k.size(2);
  auto f32 = q.options().dtype(torch::kFloat);
  FlexAttentionGrads grads;
  torch::Tensor dq = torch::zeros(q.sizes(), f32);
  torch::Tensor dk = torch::zeros(k.sizes(), f32);
  torch::Tensor dv = torch::zeros(v.sizes(), f32);
  torch::Tensor dsinks, dbias;
  if (want_dsinks && o.sinks().defined()) dsinks = torch::zeros({Hq}, f32);
  if (want_dbias && o.bias().defined()) dbias = torch::zeros({B, Hq, Tq, Tk}, f32);
  if (q.numel() > 0 && k.numel() > 0 && v.numel() > 0) {
    Prepared prep = prepare(q, k, v, o);
    FlashParams& p = prep.params;
    p.out = out.data_ptr();
    p.out_stride_b = out.stride(0), p.out_stride_h = out.stride(1), p.out_stride_t = out.stride(2),
    p.out_stride_d = out.stride(3);
    p.lse = lse.data_ptr<float>();
    p.lse_stride_b = lse.stride(0), p.lse_stride_h = lse.stride(1), p.lse_stride_t = lse.stride(2);
    torch::Tensor d = dout.to(q.scalar_type());
    FlashBackwardParams g;
    g.dout = d.data_ptr();
    g.dout_stride_b = d.stride(0), g.dout_stride_h = d.stride(1), g.dout_stride_t = d.stride(2),
    g.dout_stride_d = d.stride(3);
    g.dq = dq.data_ptr<float>();
    g.dk = dk.data_ptr<float>();
    g.dv = dv.data_ptr<float>();
    if (dsinks.defined()) g.maybe_dsinks = dsinks.data_ptr<float>();
    if (dbias.defined()) g.maybe_dbias = dbias.data_ptr<float>();
    kernels::flash::flash_backward(p, g);
  }
  grads.dq = dq.to(q.scalar_type());
  grads.dk = dk.to(k.scalar_type());
  grads.dv = dv.to(v.scalar_type());
  if (dsinks.defined()) grads.dsinks = dsinks.to(o.sinks().scalar_type());
  if (dbias.defined()) {
    // Sum dS over the bias's broadcast dims back to its shape.
    const torch::Tensor& bias = o.bias();
    const int64_t lead = 4 - bias.dim();
    std::vector<int64_t> sum_dims;
    for (int64_t i = 0; i < 4; ++i) {
      if (i < lead || bias.size(i - lead) == 1) sum_dims.push_back(i);
    }
    torch::Tensor r = sum_dims.empty() ? dbias : dbias.sum(sum_dims, /*keepdim=*/true);
    grads.dbias = r.reshape(bias.sizes()).to(bias.scalar_type());
  }
  return grads;
}

}  // namespace ops
}  // namespace attnkit
