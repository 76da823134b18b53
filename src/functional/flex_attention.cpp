// flex_attention: masks and block masks, the composed reference, and the autograd Function
// over the fused kernels (ops/flex_attention.h).

#include <attnkit/functional/flex_attention.h>

#include "ops/flex_attention.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace attnkit {
namespace functional {

// --- masks -------------------------------------------------------------------------------------

Mask causal_mask(int64_t offset) {
  Mask m([offset](int64_t, int64_t, int64_t q, int64_t kv) { return kv <= q + offset; });
  m.classify = [offset](int64_t, int64_t, int64_t q0, int64_t q1, int64_t k0, int64_t k1) {
    if (k1 - 1 <= q0 + offset) return BlockKind::kFull;
    if (k0 > q1 - 1 + offset) return BlockKind::kEmpty;
    return BlockKind::kPartial;
  };
  return m;
}

Mask sliding_window_mask(int64_t left, int64_t right, int64_t offset) {
  TORCH_CHECK(left >= 0 && right >= 0,
              "sliding_window_mask: expected left >= 0 and right >= 0, got ", left, " and ", right);
  Mask m([=](int64_t, int64_t, int64_t q, int64_t kv) {
    return kv >= q + offset - left && kv <= q + offset + right;
  });
  m.classify = [=](int64_t, int64_t, int64_t q0, int64_t q1, int64_t k0, int64_t k1) {
    if (k1 - 1 < q0 + offset - left || k0 > q1 - 1 + offset + right) return BlockKind::kEmpty;
    if (k0 >= q1 - 1 + offset - left && k1 - 1 <= q0 + offset + right) return BlockKind::kFull;
    return BlockKind::kPartial;
  };
  return m;
}

Mask sink_window_mask(int64_t num_sinks, int64_t left, int64_t offset) {
  TORCH_CHECK(num_sinks >= 0, "sink_window_mask: expected num_sinks >= 0, got ", num_sinks);
  Mask sinks([num_sinks](int64_t, int64_t, int64_t, int64_t kv) { return kv < num_sinks; });
  sinks.classify = [num_sinks](int64_t, int64_t, int64_t, int64_t, int64_t k0, int64_t k1) {
    if (k1 <= num_sinks) return BlockKind::kFull;
    if (k0 >= num_sinks) return BlockKind::kEmpty;
    return BlockKind::kPartial;
  };
  return or_masks(and_masks(sinks, causal_mask(offset)), sliding_window_mask(left, 0, offset));
}

Mask document_mask(const torch::Tensor& document_ids) {
  TORCH_CHECK(document_ids.dim() == 1, "document_mask: expected document_ids of shape [T], got ",
              document_ids.sizes());
  auto ids = std::make_shared<std::vector<int64_t>>();
  torch::Tensor c = document_ids.to(torch::kLong).contiguous().cpu();
  ids->assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  for (size_t i = 1; i < ids->size(); ++i) {
    TORCH_CHECK((*ids)[i] >= (*ids)[i - 1],
                "document_mask: expected non-decreasing document_ids, got ", (*ids)[i - 1],
                " then ", (*ids)[i], " at position ", i);
  }
  Mask m([ids](int64_t, int64_t, int64_t q, int64_t kv) { return (*ids)[q] == (*ids)[kv]; });
  m.classify = [ids](int64_t, int64_t, int64_t q0, int64_t q1, int64_t k0, int64_t k1) {
    const auto& d = *ids;
    if (d[q1 - 1] < d[k0] || d[k1 - 1] < d[q0]) return BlockKind::kEmpty;
    if (d[q0] == d[q1 - 1] && d[k0] == d[k1 - 1] && d[q0] == d[k0]) return BlockKind::kFull;
    return BlockKind::kPartial;
  };
  return m;
}

namespace {

// The two operands of and_masks / or_masks, the functor of their row hooks.
struct MaskPair {
  Mask a, b;
};

// A row hook of `m` that does nothing for an empty mask.
void apply_row(const Mask& m, int64_t b, int64_t h, int64_t q, int64_t k0, int64_t n, float* s) {
  if (m.row != nullptr) m.row(m.functor.get(), b, h, q, k0, n, s);
}

// and: each operand writes -inf over the keys it hides.
void and_row(const void* f, int64_t b, int64_t h, int64_t q, int64_t k0, int64_t n, float* s) {
  const auto& pair = *static_cast<const MaskPair*>(f);
  apply_row(pair.a, b, h, q, k0, n, s);
  apply_row(pair.b, b, h, q, k0, n, s);
}

// or: a key is hidden when both operands hide it; chunks of 64 keys through two zero rows.
void or_row(const void* f, int64_t b, int64_t h, int64_t q, int64_t k0, int64_t n, float* s) {
  const auto& pair = *static_cast<const MaskPair*>(f);
  constexpr int64_t kChunk = 64;
  float xa[kChunk], xb[kChunk];
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t m = std::min(kChunk, n - c0);
    std::fill(xa, xa + m, 0.0f);
    std::fill(xb, xb + m, 0.0f);
    apply_row(pair.a, b, h, q, k0 + c0, m, xa);
    apply_row(pair.b, b, h, q, k0 + c0, m, xb);
    for (int64_t c = 0; c < m; ++c) {
      if (xa[c] == -std::numeric_limits<float>::infinity() &&
          xb[c] == -std::numeric_limits<float>::infinity())
        s[c0 + c] = -std::numeric_limits<float>::infinity();
    }
  }
}

// The combination of a and b by `keep` (element predicates) and `row` (row hooks).
template <class Keep>
Mask combine_masks(const Mask& a, const Mask& b, Keep keep, RowHook row) {
  TORCH_CHECK(a && b, "and_masks/or_masks: expected two non-empty masks, got ",
              a ? "a non-empty" : "an empty", " and ", b ? "a non-empty" : "an empty", " mask");
  Mask m;
  m.fn = [fa = a.fn, fb = b.fn, keep](int64_t bb, int64_t h, int64_t q, int64_t kv) {
    return keep(fa(bb, h, q, kv), fb(bb, h, q, kv));
  };
  m.row = row;
  m.functor = std::make_shared<const MaskPair>(MaskPair{a, b});
  return m;
}

}  // namespace

Mask and_masks(const Mask& a, const Mask& b) {
  Mask m = combine_masks(
      a, b, [](bool x, bool y) { return x && y; }, &and_row);
  if (a.classify && b.classify) {
    m.classify = [ca = a.classify, cb = b.classify](int64_t bb, int64_t h, int64_t q0, int64_t q1,
                                                    int64_t k0, int64_t k1) {
      const BlockKind x = ca(bb, h, q0, q1, k0, k1), y = cb(bb, h, q0, q1, k0, k1);
      if (x == BlockKind::kEmpty || y == BlockKind::kEmpty) return BlockKind::kEmpty;
      if (x == BlockKind::kFull && y == BlockKind::kFull) return BlockKind::kFull;
      return BlockKind::kPartial;
    };
  }
  return m;
}

Mask or_masks(const Mask& a, const Mask& b) {
  Mask m = combine_masks(
      a, b, [](bool x, bool y) { return x || y; }, &or_row);
  if (a.classify && b.classify) {
    m.classify = [ca = a.classify, cb = b.classify](int64_t bb, int64_t h, int64_t q0, int64_t q1,
                                                    int64_t k0, int64_t k1) {
      const BlockKind x = ca(bb, h, q0, q1, k0, k1), y = cb(bb, h, q0, q1, k0, k1);
      if (x == BlockKind::kFull || y == BlockKind::kFull) return BlockKind::kFull;
      if (x == BlockKind::kEmpty && y == BlockKind::kEmpty) return BlockKind::kEmpty;
      return BlockKind::kPartial;
    };
  }
  return m;
}

// --- block masks -------------------------------------------------------------------------------

namespace {

// Kind of the block [q0, q1) x [k0, k1) from the mask's row hook, one query row at a time
// (stops as soon as the block is known to be partial); row is scratch of k1 - k0 floats.
BlockKind classify_by_rows(const Mask& mask,
                           int64_t b,
                           int64_t h,
                           int64_t q0,
                           int64_t q1,
                           int64_t k0,
                           int64_t k1,
                           float* row) {
  int64_t visible = 0;
  for (int64_t q = q0; q < q1; ++q) {
    std::fill(row, row + (k1 - k0), 0.0f);
    mask.row(mask.functor.get(), b, h, q, k0, k1 - k0, row);
    for (int64_t c = 0; c < k1 - k0; ++c) visible += row[c] == 0.0f;
    const int64_t seen = (q - q0 + 1) * (k1 - k0);
    if (visible > 0 && visible < seen) return BlockKind::kPartial;
  }
  return visible == 0 ? BlockKind::kEmpty : BlockKind::kFull;
}

}  // namespace

BlockMask create_block_mask(const Mask& mask,
                            int64_t B,
                            int64_t H,
                            int64_t seq_len_q,
                            int64_t seq_len_kv,
                            int64_t block_q,
                            int64_t block_k) {
  TORCH_CHECK(static_cast<bool>(mask), "create_block_mask: expected a mask predicate, got none");
  TORCH_CHECK(B > 0 && H > 0, "create_block_mask: expected B > 0 and H > 0, got ", B, " and ", H);
  TORCH_CHECK(seq_len_q >= 0 && seq_len_kv >= 0,
              "create_block_mask: expected non-negative lengths, got ", seq_len_q, " and ",
              seq_len_kv);
  TORCH_CHECK(block_q > 0 && block_k > 0,
              "create_block_mask: expected positive block sizes, got block_q ", block_q,
              ", block_k ", block_k);
  const int64_t nqb = (seq_len_q + block_q - 1) / block_q;
  const int64_t nkb = (seq_len_kv + block_k - 1) / block_k;
  auto i32 = torch::TensorOptions().dtype(torch::kInt);
  BlockMask bm;
  bm.kv_num_blocks = torch::zeros({B, H, nqb}, i32);
  bm.kv_indices = torch::zeros({B, H, nqb, nkb}, i32);
  bm.full_kv_num_blocks = torch::zeros({B, H, nqb}, i32);
  bm.full_kv_indices = torch::zeros({B, H, nqb, nkb}, i32);
  auto n_part = bm.kv_num_blocks.accessor<int32_t, 3>();
  auto i_part = bm.kv_indices.accessor<int32_t, 4>();
  auto n_full = bm.full_kv_num_blocks.accessor<int32_t, 3>();
  auto i_full = bm.full_kv_indices.accessor<int32_t, 4>();
  std::vector<float> row(static_cast<size_t>(block_k));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const int64_t q0 = qb * block_q, q1 = std::min(seq_len_q, q0 + block_q);
        for (int64_t kb = 0; kb < nkb; ++kb) {
          const int64_t k0 = kb * block_k, k1 = std::min(seq_len_kv, k0 + block_k);
          BlockKind kind;
          if (mask.classify) {
            kind = mask.classify(b, h, q0, q1, k0, k1);
          } else {
            kind = classify_by_rows(mask, b, h, q0, q1, k0, k1, row.data());
          }
          if (kind == BlockKind::kPartial) i_part[b][h][qb][n_part[b][h][qb]++] = kb;
          if (kind == BlockKind::kFull) i_full[b][h][qb][n_full[b][h][qb]++] = kb;
        }
      }
    }
  }
  bm.mask_mod = mask;
  bm.block_q = block_q;
  bm.block_k = block_k;
  bm.seq_len_q = seq_len_q;
  bm.seq_len_kv = seq_len_kv;
  return bm;
}

BlockMask block_mask_from_keep(const torch::Tensor& keep, int64_t block_q, int64_t block_k) {
  TORCH_CHECK(keep.scalar_type() == torch::kBool && keep.dim() >= 2 && keep.dim() <= 4,
              "block_mask_from_keep: expected a bool keep mask of 2 to 4 dims, got ",
              keep.scalar_type(), " of shape ", keep.sizes());
  TORCH_CHECK(block_q > 0 && block_k > 0,
              "block_mask_from_keep: expected positive block sizes, got block_q ", block_q,
              ", block_k ", block_k);
  torch::Tensor k4 = keep;
  while (k4.dim() < 4) k4 = k4.unsqueeze(0);
  const int64_t B = k4.size(0), H = k4.size(1), Tq = k4.size(2), Tk = k4.size(3);
  const int64_t nqb = (Tq + block_q - 1) / block_q, nkb = (Tk + block_k - 1) / block_k;
  // Visible elements per block; the zero padding of the last blocks makes them at most partial.
  torch::Tensor padded = torch::constant_pad_nd(k4.to(torch::kByte),
                                                {0, nkb * block_k - Tk, 0, nqb * block_q - Tq}, 0);
  torch::Tensor count =
      padded.view({B, H, nqb, block_q, nkb, block_k}).sum({3, 5}, /*keepdim=*/false, torch::kInt);
  torch::Tensor full = count == block_q * block_k;
  torch::Tensor partial = (count > 0) & full.logical_not();
  // Index lists: the blocks of a kind first (ascending), then the rest; counts say how many.
  torch::Tensor ar = torch::arange(nkb, torch::TensorOptions().dtype(torch::kLong));
  auto index_list = [&](const torch::Tensor& kind) {
    torch::Tensor order_key = torch::where(kind, ar, ar + nkb);
    return std::make_pair(kind.sum(-1, /*keepdim=*/false, torch::kInt),
                          std::get<1>(order_key.sort(-1)).to(torch::kInt).contiguous());
  };
  BlockMask bm;
  std::tie(bm.kv_num_blocks, bm.kv_indices) = index_list(partial);
  std::tie(bm.full_kv_num_blocks, bm.full_kv_indices) = index_list(full);
  bm.block_q = block_q;
  bm.block_k = block_k;
  bm.seq_len_q = Tq;
  bm.seq_len_kv = Tk;
  return bm;
}

torch::Tensor BlockMask::to_dense() const {
  const int64_t nkb = kv_indices.size(3);
  auto sizes = kv_indices.sizes();
  torch::Tensor dense = torch::zeros(sizes, torch::TensorOptions().dtype(torch::kChar));
  torch::Tensor ar = torch::arange(nkb, torch::TensorOptions().dtype(torch::kInt));
  // Entry n of an index list is valid when n < count.
  torch::Tensor valid = ar.view({1, 1, 1, nkb}) < kv_num_blocks.unsqueeze(-1);
  dense.scatter_add_(3, kv_indices.to(torch::kLong), valid.to(torch::kChar));
  if (full_kv_indices.defined()) {
    torch::Tensor fvalid = ar.view({1, 1, 1, nkb}) < full_kv_num_blocks.unsqueeze(-1);
    dense.scatter_add_(3, full_kv_indices.to(torch::kLong), fvalid.to(torch::kChar) * 2);
  }
  return dense;
}

double BlockMask::density() const {
  torch::Tensor visited = kv_num_blocks.to(torch::kDouble);
  if (full_kv_num_blocks.defined()) visited = visited + full_kv_num_blocks.to(torch::kDouble);
  const double total = static_cast<double>(kv_num_blocks.numel() * kv_indices.size(3));
  return total > 0 ? visited.sum().item<double>() / total : 0.0;
}

// --- the composed reference ----------------------------------------------------------------------

namespace {

// Dense boolean visibility of a block mask: [B|1, H|1, Tq, Tk].
torch::Tensor block_mask_keep(const BlockMask& bm) {
  torch::Tensor kinds = bm.to_dense();  // [B', H', nqb, nkb]
  kinds = kinds.repeat_interleave(bm.block_q, 2).repeat_interleave(bm.block_k, 3);
  kinds = kinds.slice(2, 0, bm.seq_len_q).slice(3, 0, bm.seq_len_kv).contiguous();
  torch::Tensor keep = kinds == 2;
  if (!bm.mask_mod) return keep | (kinds == 1);
  auto kind = kinds.accessor<int8_t, 4>();
  auto out = keep.accessor<bool, 4>();
  for (int64_t b = 0; b < kinds.size(0); ++b)
    for (int64_t h = 0; h < kinds.size(1); ++h)
      for (int64_t q = 0; q < kinds.size(2); ++q)
        for (int64_t kv = 0; kv < kinds.size(3); ++kv)
          if (kind[b][h][q][kv] == 1) out[b][h][q][kv] = bm.mask_mod.fn(b, h, q, kv);
  return keep;
}

torch::Tensor element_keep(const MaskMod& fn, int64_t B, int64_t H, int64_t Tq, int64_t Tk) {
  torch::Tensor keep = torch::empty({B, H, Tq, Tk}, torch::TensorOptions().dtype(torch::kBool));
  auto out = keep.accessor<bool, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t q = 0; q < Tq; ++q)
        for (int64_t kv = 0; kv < Tk; ++kv) out[b][h][q][kv] = fn(b, h, q, kv);
  return keep;
}

}  // namespace

FlexAttentionResult flex_attention_reference(const torch::Tensor& q,
                                             const torch::Tensor& k,
                                             const torch::Tensor& v,
                                             const FlexAttentionOptions& o) {
  ops::check_flex_inputs("flex_attention_reference", q, k, v, o);
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), Dv = v.size(3), G = Hq / Hkv;
  const double scale = o.scale().value_or(1.0 / std::sqrt(static_cast<double>(D)));
  const auto compute = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  torch::Tensor qg = q.to(compute).reshape({B, Hkv, G, Tq, D});
  torch::Tensor kg = k.to(compute).unsqueeze(2);
  torch::Tensor vg = v.to(compute).unsqueeze(2);
  torch::Tensor logits = (torch::matmul(qg, kg.transpose(-1, -2)) * scale).reshape({B, Hq, Tq, Tk});
  if (o.softcap() > 0) logits = o.softcap() * torch::tanh(logits / o.softcap());
  auto i64 = torch::TensorOptions().dtype(torch::kLong).device(q.device());
  if (o.alibi_slopes().defined()) {
    // pos(i) = i + (Tk - Tq); s += slope[h] * (j - pos(i))
    torch::Tensor rel =
        torch::arange(Tk, i64).unsqueeze(0) - (torch::arange(Tq, i64).unsqueeze(1) + (Tk - Tq));
    logits = logits + o.alibi_slopes().detach().to(compute).view({1, Hq, 1, 1}) * rel.to(compute);
  }
  if (o.bias().defined()) logits = logits + o.bias().to(compute);
  if (o.score_mod()) {
    // Values from the functor; its derivative with respect to the score is taken as 1.
    torch::Tensor s = logits.detach().to(torch::kFloat).contiguous();
    auto a = s.accessor<float, 4>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Tq; ++i)
          for (int64_t j = 0; j < Tk; ++j)
            a[b][h][i][j] = o.score_mod().fn(a[b][h][i][j], b, h, i, j);
    logits = logits + (s.to(compute) - logits.detach());
  }

  DotProductAttentionOptions positional;
  positional.causal(o.causal()).window_left(o.window_left()).window_right(o.window_right());
  torch::Tensor keep = positional_keep_mask(Tq, Tk, positional, q.device());
  auto combine = [&](const torch::Tensor& m) { keep = keep.defined() ? keep & m : m; };
  if (o.mask().defined()) combine(o.mask());
  if (o.block_mask()) combine(block_mask_keep(*o.block_mask()));
  if (o.mask_mod()) combine(element_keep(o.mask_mod().fn, B, Hq, Tq, Tk));
  if (keep.defined()) logits = logits.masked_fill(keep.logical_not(), neg_inf);

  torch::Tensor row_max = std::get<0>(logits.detach().max(-1, /*keepdim=*/true));
  torch::Tensor sink;
  if (o.sinks().defined()) {
    sink = o.sinks().to(compute).view({1, Hq, 1, 1});
    row_max = torch::maximum(row_max, sink.detach().expand_as(row_max));
  }
  row_max = row_max.masked_fill(row_max == neg_inf, 0.0);
  torch::Tensor p = torch::exp(logits - row_max);
  torch::Tensor denom = p.sum(-1, /*keepdim=*/true);
  if (sink.defined()) denom = denom + torch::exp(sink - row_max);
  torch::Tensor safe = torch::where(denom > 0, denom, torch::ones_like(denom));
  torch::Tensor out = torch::matmul((p / safe).reshape({B, Hkv, G, Tq, Tk}), vg);
  FlexAttentionResult r;
  r.output = out.reshape({B, Hq, Tq, Dv}).to(q.scalar_type());
  r.lse = (row_max + torch::log(denom)).squeeze(-1);
  return r;
}

// --- the fused path with autograd ------------------------------------------------------------

namespace {

// The non-tensor options, kept alive in the autograd graph until the backward runs.
struct FlexConfig : torch::CustomClassHolder {
  FlexAttentionOptions options;
};

class FlexAttentionFunction : public torch::autograd::Function<FlexAttentionFunction> {
 public:
  // sinks and bias are passed separately so autograd tracks them; config holds the rest.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                torch::Tensor q,
                                                torch::Tensor k,
                                                torch::Tensor v,
                                                torch::Tensor sinks,
                                                torch::Tensor bias,
                                                c10::intrusive_ptr<FlexConfig> config) {
    FlexAttentionResult r = ops::flex_attention_forward(q, k, v, config->options);
    ctx->save_for_backward({q, k, v, r.output, r.lse});
    ctx->saved_data["config"] = c10::IValue::make_capsule(config);
    ctx->mark_non_differentiable({r.lse});
    return {r.output, r.lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    c10::intrusive_ptr<torch::CustomClassHolder> holder = ctx->saved_data["config"].toCapsule();
    const auto* config = static_cast<const FlexConfig*>(holder.get());
    torch::Tensor dout = grad_outputs[0];
    if (!dout.defined()) dout = torch::zeros_like(saved[3]);
    ops::FlexAttentionGrads g = ops::flex_attention_backward(
        dout, saved[0], saved[1], saved[2], saved[3], saved[4], config->options,
        ctx->needs_input_grad(3), ctx->needs_input_grad(4));
    return {g.dq, g.dk, g.dv, g.dsinks, g.dbias, torch::Tensor()};
  }
};

bool needs_grad(const torch::Tensor& t) { return t.defined() && t.requires_grad(); }

// Function::apply cannot take undefined tensors (LibTorch 1.13): absent sinks / bias travel as
// empty placeholders that never require grad.
torch::Tensor defined_or_empty(const torch::Tensor& t) {
  return t.defined() ? t : torch::empty({0});
}

}  // namespace

FlexAttentionResult flex_attention(const torch::Tensor& q,
                                   const torch::Tensor& k,
                                   const torch::Tensor& v,
                                   const FlexAttentionOptions& o) {
  ops::check_flex_inputs("flex_attention", q, k, v, o);
  if (!fused_backend_selected() || !ops::fused_supported(q)) {
    return flex_attention_reference(q, k, v, o);
  }
  const bool grad =
      torch::GradMode::is_enabled() && (needs_grad(q) || needs_grad(k) || needs_grad(v) ||
                                        needs_grad(o.sinks()) || needs_grad(o.bias()));
  // ALiBi slopes are constants of the fused backward: learnable slopes take the reference.
  if (torch::GradMode::is_enabled() && needs_grad(o.alibi_slopes())) {
    return flex_attention_reference(q, k, v, o);
  }
  if (!grad) return ops::flex_attention_forward(q, k, v, o);
  auto config = c10::make_intrusive<FlexConfig>();
  config->options = o;
  torch::autograd::variable_list r = FlexAttentionFunction::apply(
      q, k, v, defined_or_empty(o.sinks()), defined_or_empty(o.bias()), config);
  return FlexAttentionResult{r[0], r[1]};
}

}  // namespace functional
}  // namespace attnkit
