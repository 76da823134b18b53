#include <attnkit/attention/minimax_sparse_attention.h>

#include <attnkit/core/rms_norm.h>
#include <attnkit/functional/dot_product_attention.h>
#include <attnkit/functional/flex_attention.h>
#include <attnkit/functional/gather_attention.h>
#include <attnkit/functional/index_topk.h>

#include "attention/dense_common.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace attnkit {

namespace {
constexpr const char* kName = "MiniMaxSparseAttention";
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
}  // namespace

MiniMaxSparseAttentionOptions::MiniMaxSparseAttentionOptions(int64_t dim,
                                                             int64_t num_heads,
                                                             int64_t num_kv_groups)
    : dim_(dim), num_heads_(num_heads), num_kv_groups_(num_kv_groups) {}

MiniMaxSparseAttentionImpl::MiniMaxSparseAttentionImpl(MiniMaxSparseAttentionOptions options_)
    : options(std::move(options_)) {
  auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, kName, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.num_kv_groups() > 0, kName, ": num_kv_groups must be positive, got ",
              o.num_kv_groups());
  TORCH_CHECK(o.dim() % o.num_heads() == 0, kName, ": dim (", o.dim(),
              ") must be divisible by num_heads (", o.num_heads(), ")");
  TORCH_CHECK(o.num_heads() % o.num_kv_groups() == 0, kName, ": num_heads (", o.num_heads(),
              ") must be divisible by num_kv_groups (", o.num_kv_groups(), ")");
  TORCH_CHECK(o.block_size() > 0, kName, ": block_size must be positive, got ", o.block_size());
  TORCH_CHECK(o.top_k() > 0, kName, ": top_k must be positive, got ", o.top_k());
  TORCH_CHECK(o.index_dim() >= 0, kName, ": index_dim must be >= 0 (0 = head width), got ",
              o.index_dim());
  TORCH_CHECK(o.rope_dim() >= 0, kName,
              ": rope_dim must be >= 0 (0 = min(head width, index_dim)), got ", o.rope_dim());
  TORCH_CHECK(o.qk_norm_eps() >= 0, kName, ": qk_norm_eps must be >= 0, got ", o.qk_norm_eps());
  const int64_t hd = o.dim() / o.num_heads();
  if (o.index_dim() == 0) o.index_dim(hd);
  const int64_t di = o.index_dim();
  if (o.use_rope()) {
    TORCH_CHECK(o.rope_theta() > 1, kName, ": rope_theta must be > 1, got ", o.rope_theta());
    if (o.partial_rope()) {
      if (o.rope_dim() == 0) o.rope_dim(std::min(hd, di));
      TORCH_CHECK(o.rope_dim() % 2 == 0, kName, ": rope_dim must be even, got ", o.rope_dim());
      TORCH_CHECK(o.rope_dim() <= hd, kName, ": rope_dim (", o.rope_dim(),
                  ") must be <= the head width dim / num_heads (", hd, ")");
      TORCH_CHECK(o.rope_dim() <= di, kName, ": rope_dim (", o.rope_dim(),
                  ") must be <= index_dim (", di, ")");
    } else {
      TORCH_CHECK(o.rope_dim() == 0, kName, ": rope_dim (", o.rope_dim(),
                  ") has no meaning with partial_rope(false), which rotates every channel");
      TORCH_CHECK(hd % 2 == 0, kName, ": full rope needs an even head width dim / num_heads, got ",
                  hd);
      TORCH_CHECK(di % 2 == 0, kName, ": full rope needs an even index_dim, got ", di);
    }
  }
  reset();
}

MiniMaxSparseAttentionImpl::MiniMaxSparseAttentionImpl(int64_t dim,
                                                       int64_t num_heads,
                                                       int64_t num_kv_groups)
    : MiniMaxSparseAttentionImpl(MiniMaxSparseAttentionOptions(dim, num_heads, num_kv_groups)) {}

void MiniMaxSparseAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim(), Gk = o.num_kv_groups(), hd = D / o.num_heads(), di = o.index_dim();
  auto linear = [&](int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(D, out).bias(o.bias()));
  };
  q = register_module("q", linear(D));
  k = register_module("k", linear(Gk * hd));
  v = register_module("v", linear(Gk * hd));
  idx_q = register_module("idx_q", linear(Gk * di));
  idx_k = register_module("idx_k", linear(di));
  if (o.qk_norm()) {
    q_norm = register_parameter("q_norm", torch::ones({hd}));
    k_norm = register_parameter("k_norm", torch::ones({hd}));
    idx_q_norm = register_parameter("idx_q_norm", torch::ones({di}));
    idx_k_norm = register_parameter("idx_k_norm", torch::ones({di}));
  }
  proj = register_module("proj", linear(D));
  if (o.use_rope()) {
    auto rope = RopeOptions().theta(o.rope_theta()).style(RopeStyle::kHalf);
    // partial: the first rope_dim channels; full: dim 0 = every channel of the head
    rope_.emplace(RopeOptions(rope).dim(o.partial_rope() ? o.rope_dim() : 0), hd, kName);
    index_rope_.emplace(RopeOptions(rope).dim(o.partial_rope() ? o.rope_dim() : 0), di, kName);
  }
}

void MiniMaxSparseAttentionImpl::reset_parameters() {
  for (auto& child : children()) {
    if (auto* linear = child->as<torch::nn::Linear>()) linear->reset_parameters();
  }
  torch::NoGradGuard no_grad;
  for (torch::Tensor* w : {&q_norm, &k_norm, &idx_q_norm, &idx_k_norm}) {
    if (w->defined()) w->fill_(1.0);
  }
}

void MiniMaxSparseAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::MiniMaxSparseAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", num_kv_groups=" << o.num_kv_groups() << ", block_size=" << o.block_size()
         << ", top_k=" << o.top_k() << ", index_dim=" << o.index_dim()
         << ", rope_dim=" << o.rope_dim() << ", partial_rope=" << detail::str(o.partial_rope())
         << ", causal=" << detail::str(o.causal()) << ", use_rope=" << detail::str(o.use_rope())
         << ", rope_theta=" << o.rope_theta()
         << ", force_current_block=" << detail::str(o.force_current_block())
         << ", bias=" << detail::str(o.bias()) << ", qk_norm=" << detail::str(o.qk_norm())
         << ", qk_norm_eps=" << o.qk_norm_eps()
         << ", detach_index=" << detail::str(o.detach_index()) << ")";
}

MiniMaxSparseOutput MiniMaxSparseAttentionImpl::run(const torch::Tensor& x,
                                                    const torch::Tensor& attn_mask,
                                                    DecodeState* state,
                                                    bool need_aux) {
  detail::check_sequence_input(kName, x, options.dim(), q->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1), D = o.dim(), H = o.num_heads();
  const int64_t Gk = o.num_kv_groups(), G = H / Gk, hd = D / H, di = o.index_dim();
  const int64_t bs = o.block_size();
  const int64_t offset = state ? state->length() : 0;
  const double eps = o.qk_norm_eps();

  // Main branch: q [B, T, H, hd], k and v [B, T, Gk, hd]
  torch::Tensor qm = q(x).view({B, T, H, hd});
  torch::Tensor km = k(x).view({B, T, Gk, hd});
  torch::Tensor vm = v(x).view({B, T, Gk, hd});
  // Index branch: queries [B, T, Gk, di], one shared key [B, T, di]
  const torch::Tensor x_index = o.detach_index() ? x.detach() : x;
  torch::Tensor qi = idx_q(x_index).view({B, T, Gk, di});
  torch::Tensor ki = idx_k(x_index);
  if (o.qk_norm()) {
    qm = rms_norm(qm, q_norm, eps);
    km = rms_norm(km, k_norm, eps);
    qi = rms_norm(qi, idx_q_norm, eps);
    ki = rms_norm(ki, idx_k_norm, eps);
  }
  if (rope_) {
    qm = rope_->apply(qm, offset);
    km = rope_->apply(km, offset);
    qi = index_rope_->apply(qi, offset);
    ki = index_rope_->apply(ki, offset);
  }
  qm = qm.transpose(1, 2);  // [B, H, T, hd]
  km = km.transpose(1, 2);  // [B, Gk, T, hd]
  vm = vm.transpose(1, 2);
  if (state) {
    km = state->append("k", km, 2);  // [B, Gk, Tk, hd]
    vm = state->append("v", vm, 2);
    ki = state->append("index_k", ki, 1);  // [B, Tk, di]
    state->advance(T);
  }
  const int64_t Tk = km.size(2);
  const int64_t nb = (Tk + bs - 1) / bs;

  // The causal rule (bottom-right aligned) and the attn_mask.
  DotProductAttentionOptions attn;
  attn.causal(o.causal()).need_weights(need_aux);
  // num_heads = 1: the mask is shared by all groups, so per-head masks are refused.
  detail::add_attn_mask(kName, attn_mask, B, /*num_heads=*/1, T, attn);
  const int64_t K = std::max<int64_t>(1, std::min(o.top_k(), nb));
  const double index_scale = 1.0 / std::sqrt(static_cast<double>(di));
  auto bool_opts = x.options().dtype(torch::kBool);
  auto i64 = x.options().dtype(torch::kLong);
  torch::Tensor pos = torch::arange(T, i64).add(Tk - T).view({T, 1});  // query positions

  // Fused path: the fused indexer picks each query's top blocks without a [T, Tk] score matrix,
  // then each query attends to the tokens of its blocks through the gather kernel (O(T K bs)
  // instead of O(T Tk)). The masked dense call stays for the attention weights, an additive
  // attn_mask, the reference backend and the dtypes the kernels do not cover.
  const bool gather =
      !need_aux && !attn.bias().defined() && functional::sparse_kernels_available(qm);
  if (gather) {
    torch::Tensor mask = attn.mask().defined() ? attn.mask().squeeze(1) : torch::Tensor();
    auto select = functional::IndexTopkOptions()
                      .top_k(K)
                      .causal(o.causal())
                      .relu(false)
                      .scale(index_scale)
                      .block_size(bs)
                      .mask(mask);
    // [B, Gk, T, K] block ids ascending, -1 = unused
    torch::Tensor sel = functional::index_topk(qi.transpose(1, 2).unsqueeze(3), ki, {}, select);
    if (o.force_current_block()) {
      // The current block as one more list entry, unless it is already among the kept ones.
      torch::Tensor current =
          torch::div(pos, bs, "floor").clamp_max(nb - 1).view({1, 1, T, 1}).expand({B, Gk, T, 1});
      sel = torch::cat({sel, current.masked_fill((sel == current).any(-1, true), -1)}, -1);
    }
    // The kernel reads the block lists and drops future keys itself. An attn_mask turns them
    // into token lists, by chunks of queries ([B, Gk, n, nsel * bs] int64 each): a block's
    // tokens, -1 past Tk, in the future or masked.
    MiniMaxSparseOutput out;
    if (!mask.defined()) {
      auto opts = functional::GatherAttentionOptions().block_size(bs).causal(o.causal());
      out.output = proj(functional::gather_attention(qm, km, vm, sel, {}, opts)
                            .output.transpose(1, 2)
                            .reshape({B, T, D}));
      return out;
    }
    const int64_t nsel = sel.size(-1);
    // Chunks of queries whose token lists hold about 4M int64 entries (32 MB) each.
    const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 22) / (B * Gk * nsel * bs));
    torch::Tensor offsets = torch::arange(bs, i64);
    std::vector<torch::Tensor> outs;
    for (int64_t r0 = 0; r0 < T; r0 += rows) {
      const int64_t n = std::min(rows, T - r0);
      torch::Tensor blocks = sel.narrow(2, r0, n);
      torch::Tensor tok = (blocks.mul(bs).unsqueeze(-1) + offsets).view({B, Gk, n, -1});
      torch::Tensor ok =
          blocks.ge(0).unsqueeze(-1).expand({B, Gk, n, nsel, bs}).reshape({B, Gk, n, -1}) &
          tok.lt(Tk) &
          mask.narrow(1, r0, n)
              .unsqueeze(1)
              .expand({B, Gk, n, Tk})
              .gather(-1, tok.clamp(0, Tk - 1));
      if (o.causal()) ok = ok & tok.le(pos.narrow(0, r0, n));
      outs.push_back(functional::gather_attention(qm.narrow(2, r0, n), km, vm,
                                                  tok.masked_fill(ok.logical_not(), -1))
                         .output);
    }
    out.output = proj(torch::cat(outs, 2).transpose(1, 2).reshape({B, T, D}));
    return out;
  }

  // Visibility [B or 1, 1, T, Tk]; token index scores [B, Gk, T, Tk] in float (double for
  // double), -inf where invisible.
  torch::Tensor visible = positional_keep_mask(T, Tk, attn, x.device());
  if (!visible.defined()) visible = torch::ones({T, Tk}, bool_opts);
  visible = visible.view({1, 1, T, Tk});
  if (attn.mask().defined()) visible = visible & attn.mask();
  if (attn.bias().defined()) visible = visible & (attn.bias() != kNegInf);
  const auto compute = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  torch::Tensor index_scores =
      torch::matmul(qi.transpose(1, 2).to(compute), ki.unsqueeze(1).transpose(-1, -2).to(compute)) *
      index_scale;
  index_scores = index_scores.masked_fill(visible.logical_not(), kNegInf);

  // Block scores [B, Gk, T, nb]: max over each block's tokens (the tail padded with -inf). They
  // keep their gradient for the 0.4.0 block-level loss (msa_index_aux_loss_v040); the selection
  // never passes one.
  torch::Tensor padded = torch::constant_pad_nd(index_scores, {0, nb * bs - Tk}, kNegInf);
  torch::Tensor block_scores = std::get<0>(padded.view({B, Gk, T, nb, bs}).max(-1));
  // Top blocks by a stable descending sort: equal scores keep the earlier block whatever nb is.
  torch::Tensor order = std::get<1>(torch::sort(block_scores.detach(), /*stable=*/true,
                                                /*dim=*/-1, /*descending=*/true));

  torch::Tensor blocks =
      torch::zeros({B, Gk, T, nb}, bool_opts).scatter(-1, order.narrow(-1, 0, K), true);
  torch::Tensor block_start = torch::arange(nb, i64).mul(bs).view({1, nb});
  if (o.causal()) blocks = blocks & (block_start <= pos);
  if (o.force_current_block()) {
    torch::Tensor current = torch::div(pos, bs, "floor").clamp_max(nb - 1);  // [T, 1]
    blocks = blocks | torch::arange(nb, i64).view({1, nb}).eq(current);
  }
  // Token keep [B, Gk, T, Tk]: kept blocks expanded to their tokens, AND visible.
  torch::Tensor keep = blocks.repeat_interleave(bs, -1).narrow(-1, 0, Tk) & visible;

  // Head h = g * G + j uses group g's keep: [B, Gk, T, Tk] -> [B, H, T, Tk].
  attn.mask(keep.unsqueeze(2).expand({B, Gk, G, T, Tk}).reshape({B, H, T, Tk}));
  AttentionResult r = functional::dot_product_attention(qm, km, vm, attn);

  MiniMaxSparseOutput out;
  out.output = proj(r.output.transpose(1, 2).reshape({B, T, D}));
  out.attn_weights = r.weights;
  if (need_aux) {
    out.index_scores = index_scores;
    out.block_scores = block_scores;
    out.selected_blocks = blocks.expand({B, Gk, T, nb});
    out.keep = keep;
  }
  return out;
}

torch::Tensor MiniMaxSparseAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor MiniMaxSparseAttentionImpl::forward(const torch::Tensor& x,
                                                  const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor MiniMaxSparseAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState MiniMaxSparseAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput MiniMaxSparseAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                             const torch::Tensor& attn_mask) {
  MiniMaxSparseOutput r = run(x, attn_mask, nullptr, true);
  return AttentionOutput{r.output, r.attn_weights};
}

MiniMaxSparseOutput MiniMaxSparseAttentionImpl::forward_with_aux_sparse(
    const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

// ---

torch::Tensor msa_index_aux_loss(const torch::Tensor& index_scores,
                                 const torch::Tensor& attn_weights,
                                 const torch::Tensor& keep,
                                 double eps) {
  constexpr const char* fn = "msa_index_aux_loss";
  TORCH_CHECK(index_scores.defined() && index_scores.dim() == 4, fn,
              ": expected index_scores of shape [B, Gk, T, Tk], got ",
              index_scores.defined() ? index_scores.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(attn_weights.defined() && attn_weights.dim() == 4, fn,
              ": expected attn_weights of shape [B, H, T, Tk], got ",
              attn_weights.defined() ? attn_weights.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(
      keep.defined() && keep.sizes() == index_scores.sizes() && keep.scalar_type() == torch::kBool,
      fn, ": expected a bool keep of the shape of index_scores ", index_scores.sizes(), ", got ",
      keep.defined() ? keep.sizes() : c10::IntArrayRef{});
  const int64_t B = index_scores.size(0), Gk = index_scores.size(1);
  const int64_t T = index_scores.size(2), Tk = index_scores.size(3), H = attn_weights.size(1);
  TORCH_CHECK(attn_weights.size(0) == B && attn_weights.size(2) == T &&
                  attn_weights.size(3) == Tk && H % Gk == 0,
              fn, ": expected attn_weights [B, H, T, Tk] with H divisible by Gk to match ",
              "index_scores [B, Gk, T, Tk] = ", index_scores.sizes(), ", got ",
              attn_weights.sizes());
  TORCH_CHECK(eps > 0, fn, ": eps must be positive, got ", eps);
  const auto compute =
      index_scores.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  // teacher <- mean over the group's heads, restricted to keep, renormalised per query
  torch::Tensor teacher =
      attn_weights.detach().to(compute).view({B, Gk, H / Gk, T, Tk}).mean(2) * keep;
  teacher = teacher / teacher.sum(-1, /*keepdim=*/true).clamp_min(eps);
  // student <- log_softmax over the kept keys; a row with no kept key gets zeros (no NaN)
  torch::Tensor scores = index_scores.to(compute).masked_fill(keep.logical_not(), kNegInf);
  torch::Tensor any = keep.any(-1, /*keepdim=*/true);
  torch::Tensor student =
      torch::log_softmax(torch::where(any, scores, torch::zeros_like(scores)), -1);
  // teacher > 0 only on kept keys, where student is finite; elsewhere the term is 0
  torch::Tensor positive = teacher > 0;
  student = torch::where(positive, student, torch::zeros_like(student));
  torch::Tensor terms = teacher * (torch::log(teacher.clamp_min(eps)) - student);
  terms = torch::where(positive, terms, torch::zeros_like(terms));
  return terms.sum(-1).mean();
}

torch::Tensor msa_index_aux_loss_v040(const torch::Tensor& block_scores,
                                      const torch::Tensor& attn_weights,
                                      int64_t block_size,
                                      int64_t group_size,
                                      double eps) {
  constexpr const char* fn = "msa_index_aux_loss_v040";
  TORCH_CHECK(block_scores.defined() && block_scores.dim() == 4, fn,
              ": expected block_scores of shape [B, G, T, nb], got ",
              block_scores.defined() ? block_scores.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(attn_weights.defined() && attn_weights.dim() == 4, fn,
              ": expected attn_weights of shape [B, H, T, Tk], got ",
              attn_weights.defined() ? attn_weights.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(block_size > 0, fn, ": block_size must be positive, got ", block_size);
  TORCH_CHECK(group_size > 0, fn, ": group_size must be positive, got ", group_size);
  TORCH_CHECK(eps > 0, fn, ": eps must be positive, got ", eps);
  const int64_t B = block_scores.size(0), G = block_scores.size(1), T = block_scores.size(2);
  const int64_t nb = block_scores.size(3), H = attn_weights.size(1), Tk = attn_weights.size(3);
  TORCH_CHECK(attn_weights.size(0) == B && attn_weights.size(2) == T && H == G * group_size, fn,
              ": expected attn_weights [B, H, T, Tk] with H = G * group_size (", G, " * ",
              group_size, ") to match block_scores [B, G, T, nb] = ", block_scores.sizes(),
              ", got ", attn_weights.sizes());
  TORCH_CHECK(Tk <= nb * block_size, fn, ": attn_weights has ", Tk, " keys but block_scores ",
              "covers nb * block_size = ", nb, " * ", block_size, " = ", nb * block_size);
  const auto compute =
      block_scores.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  // mass <- attention weight per key block (keys past Tk are 0), then the group's head mean
  torch::Tensor mass = torch::constant_pad_nd(attn_weights.detach().to(compute),
                                              {0, nb * block_size - Tk});
  mass = mass.view({B, H, T, nb, block_size}).sum(-1);
  mass = mass.view({B, G, group_size, T, nb}).mean(2);  // [B, G, T, nb]
  torch::Tensor teacher = mass / mass.sum(-1, /*keepdim=*/true).clamp_min(eps);
  // log_softmax over the blocks; a row without a finite score gets zeros (no NaN, forward or back)
  torch::Tensor scores = block_scores.to(compute);
  torch::Tensor any = (scores > kNegInf).any(-1, /*keepdim=*/true);
  torch::Tensor log_p =
      torch::log_softmax(torch::where(any, scores, torch::zeros_like(scores)), -1);
  // blocks without mass contribute 0 (their score may be -inf)
  log_p = torch::where(teacher != 0, log_p, torch::zeros_like(log_p));
  return -(teacher * log_p).sum(-1).mean();
}

}  // namespace attnkit
