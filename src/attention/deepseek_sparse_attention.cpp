#include <attnkit/attention/deepseek_sparse_attention.h>

#include <attnkit/functional/dot_product_attention.h>
#include <attnkit/functional/flex_attention.h>
#include <attnkit/functional/gather_attention.h>
#include <attnkit/functional/index_topk.h>

#include "attention/dense_common.h"

#include <algorithm>
#include <limits>

namespace attnkit {

namespace {
constexpr const char* kName = "DeepSeekSparseAttention";
constexpr const char* kIndexerName = "LightningIndexer";
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
}  // namespace

// ---

LightningIndexerOptions::LightningIndexerOptions(int64_t dim) : dim_(dim) {}

LightningIndexerImpl::LightningIndexerImpl(LightningIndexerOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, kIndexerName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, kIndexerName, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.head_dim() > 0, kIndexerName, ": head_dim must be positive, got ", o.head_dim());
  reset();
}

void LightningIndexerImpl::reset() {
  const auto& o = options;
  auto linear = [&](int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(o.dim(), out).bias(o.bias()));
  };
  wq = register_module("wq", linear(o.num_heads() * o.head_dim()));
  wk = register_module("wk", linear(o.head_dim()));
  ww = register_module("ww", linear(o.num_heads()));
}

void LightningIndexerImpl::reset_parameters() { detail::reset_linears({wq, wk, ww}); }

void LightningIndexerImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::LightningIndexer(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ", head_dim=" << options.head_dim()
         << ", bias=" << detail::str(options.bias()) << ")";
}

std::pair<torch::Tensor, torch::Tensor> LightningIndexerImpl::queries(const torch::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1);
  return {wq(x).view({B, T, options.num_heads(), options.head_dim()}), ww(x)};
}

torch::Tensor LightningIndexerImpl::keys(const torch::Tensor& x) { return wk(x); }

torch::Tensor LightningIndexerImpl::score(const torch::Tensor& q,
                                          const torch::Tensor& w,
                                          const torch::Tensor& k) {
  // per head: ReLU(q[t, h] . k[s]) -> [B, Tq, Hi, Tk]; then sum_h w[t, h] * (.) -> [B, Tq, Tk]
  torch::Tensor per_head = torch::relu(torch::matmul(q, k.unsqueeze(1).transpose(-1, -2)));
  return torch::matmul(w.unsqueeze(2), per_head).squeeze(2);
}

torch::Tensor LightningIndexerImpl::forward(const torch::Tensor& x) {
  detail::check_sequence_input(kIndexerName, x, options.dim(), wq->weight);
  auto qw = queries(x);
  return score(qw.first, qw.second, keys(x));
}

// ---

DeepSeekSparseAttentionOptions::DeepSeekSparseAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

DeepSeekSparseAttentionImpl::DeepSeekSparseAttentionImpl(DeepSeekSparseAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, kName, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.dim() % o.num_heads() == 0, kName, ": dim (", o.dim(),
              ") must be divisible by num_heads (", o.num_heads(), ")");
  TORCH_CHECK(o.top_k() > 0, kName, ": top_k must be positive, got ", o.top_k());
  TORCH_CHECK(o.num_index_heads() > 0, kName, ": num_index_heads must be positive, got ",
              o.num_index_heads());
  TORCH_CHECK(o.index_head_dim() > 0, kName, ": index_head_dim must be positive, got ",
              o.index_head_dim());
  reset();
}

DeepSeekSparseAttentionImpl::DeepSeekSparseAttentionImpl(int64_t dim, int64_t num_heads)
    : DeepSeekSparseAttentionImpl(DeepSeekSparseAttentionOptions(dim, num_heads)) {}

void DeepSeekSparseAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim();
  qkv =
      register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(D, 3 * D).bias(o.bias())));
  proj = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(D, D).bias(o.bias())));
  indexer = register_module("indexer", LightningIndexer(LightningIndexerOptions(D)
                                                            .num_heads(o.num_index_heads())
                                                            .head_dim(o.index_head_dim())
                                                            .bias(o.bias())));
}

void DeepSeekSparseAttentionImpl::reset_parameters() {
  qkv->reset_parameters();
  proj->reset_parameters();
  indexer->reset_parameters();
}

void DeepSeekSparseAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::DeepSeekSparseAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", top_k=" << o.top_k() << ", num_index_heads=" << o.num_index_heads()
         << ", index_head_dim=" << o.index_head_dim() << ", causal=" << detail::str(o.causal())
         << ", bias=" << detail::str(o.bias()) << ", detach_index=" << detail::str(o.detach_index())
         << ")";
}

DeepSeekSparseOutput DeepSeekSparseAttentionImpl::run(const torch::Tensor& x,
                                                      const torch::Tensor& attn_mask,
                                                      DecodeState* state,
                                                      bool need_aux) {
  detail::check_sequence_input(kName, x, options.dim(), qkv->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1), D = o.dim(), H = o.num_heads(), hd = D / H;

  // Main branch: q, k, v [B, H, T, hd]
  torch::Tensor qkv_x = qkv(x).view({B, T, 3, H, hd});
  torch::Tensor q = qkv_x.select(2, 0).transpose(1, 2);
  torch::Tensor k = qkv_x.select(2, 1).transpose(1, 2);
  torch::Tensor v = qkv_x.select(2, 2).transpose(1, 2);
  // Indexer branch: queries [B, T, Hi, di], weights [B, T, Hi], keys [B, T, di]
  const torch::Tensor x_index = o.detach_index() ? x.detach() : x;
  auto index_qw = indexer->queries(x_index);
  torch::Tensor index_k = indexer->keys(x_index);
  if (state) {
    k = state->append("k", k, 2);  // [B, H, Tk, hd]
    v = state->append("v", v, 2);
    index_k = state->append("index_k", index_k, 1);  // [B, Tk, di]
    state->advance(T);
  }
  const int64_t Tk = k.size(2);

  // The causal rule (bottom-right aligned) and the attn_mask.
  DotProductAttentionOptions attn;
  attn.causal(o.causal()).need_weights(need_aux);
  // num_heads = 1: the selection is shared by all heads, so per-head masks are refused.
  detail::add_attn_mask(kName, attn_mask, B, /*num_heads=*/1, T, attn);

  const int64_t K = std::min(o.top_k(), Tk);
  // Fused path: every query attends to its selected keys only (gather kernel, O(T K) instead of
  // O(T Tk)). The masked dense call stays for the attention weights, an additive attn_mask, the
  // reference backend and the dtypes the kernels do not cover.
  const bool gather =
      !need_aux && !attn.bias().defined() && functional::sparse_kernels_available(q);
  if (gather) {
    // The fused indexer scores every visible key and keeps the top K per query without a
    // [T, Tk] score matrix; its one list per query is shared by all heads (kv head h serves
    // query head h). The selection is not differentiable. int32 lists: half the memory.
    auto select = functional::IndexTopkOptions()
                      .top_k(K)
                      .causal(o.causal())
                      .relu(true)
                      .index_dtype(torch::kInt);
    if (attn.mask().defined()) select.mask(attn.mask().squeeze(1));
    torch::Tensor selected_indices = functional::index_topk(
        index_qw.first.unsqueeze(1), index_k, index_qw.second.unsqueeze(1), select);  // [B,1,T,K]
    // A whole causal prefill splits its queries between the flash and gather kernels.
    torch::Tensor heads =
        o.causal() && !attn.mask().defined() && !state
            ? functional::causal_topk_attention(q, k, v, selected_indices)
            : functional::gather_attention(q, k, v, selected_indices).output.transpose(1, 2);
    DeepSeekSparseOutput out;
    out.output = proj(heads.reshape({B, T, D}));
    return out;
  }

  // Visibility [B or 1, T, Tk] and scores [B, T, Tk], -inf where invisible
  torch::Tensor visible = positional_keep_mask(T, Tk, attn, x.device());
  if (!visible.defined()) visible = torch::ones({T, Tk}, x.options().dtype(torch::kBool));
  visible = visible.unsqueeze(0);
  if (attn.mask().defined()) visible = visible & attn.mask().squeeze(1);
  if (attn.bias().defined()) visible = visible & (attn.bias().squeeze(1) != kNegInf);

  torch::Tensor index_scores = LightningIndexerImpl::score(index_qw.first, index_qw.second, index_k)
                                   .masked_fill(visible.logical_not(), kNegInf);

  // Top-k per query by a stable descending sort: equal scores keep the earlier key, whatever
  // the row length, so a decoding step selects what the full forward selects.
  torch::Tensor order = std::get<1>(torch::sort(index_scores.detach(), /*stable=*/true,
                                                /*dim=*/-1, /*descending=*/true));
  torch::Tensor top = order.narrow(-1, 0, K);                            // [B, T, K]
  torch::Tensor top_valid = visible.expand({B, T, Tk}).gather(-1, top);  // [B, T, K]
  torch::Tensor selected_indices = top.masked_fill(top_valid.logical_not(), -1);

  torch::Tensor selected = torch::zeros({B, T, Tk}, visible.options()).scatter(-1, top, top_valid);

  // The selection already implies causality; causal(true) stays set so that a block-sparse
  // engine can skip the future blocks. An additive attn_mask still adds its bias.
  attn.mask(selected.unsqueeze(1));
  AttentionResult r = functional::dot_product_attention(q, k, v, attn);

  DeepSeekSparseOutput out;
  out.output = proj(r.output.transpose(1, 2).reshape({B, T, D}));
  out.attn_weights = r.weights;
  if (need_aux) {
    out.index_scores = index_scores;
    out.selected = selected;
    out.selected_indices = selected_indices;
  }
  return out;
}

torch::Tensor DeepSeekSparseAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor DeepSeekSparseAttentionImpl::forward(const torch::Tensor& x,
                                                   const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor DeepSeekSparseAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState DeepSeekSparseAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput DeepSeekSparseAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                              const torch::Tensor& attn_mask) {
  DeepSeekSparseOutput r = run(x, attn_mask, nullptr, true);
  return AttentionOutput{r.output, r.attn_weights};
}

DeepSeekSparseOutput DeepSeekSparseAttentionImpl::forward_with_aux_sparse(
    const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

// ---

torch::Tensor dsa_index_aux_loss(const torch::Tensor& index_scores,
                                 const torch::Tensor& attn_weights) {
  constexpr const char* fn = "dsa_index_aux_loss";
  TORCH_CHECK(index_scores.defined() && index_scores.dim() == 3, fn,
              ": expected index_scores of shape [B, T, Tk], got ",
              index_scores.defined() ? index_scores.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(attn_weights.defined() && attn_weights.dim() == 4, fn,
              ": expected attn_weights of shape [B, H, T, Tk], got ",
              attn_weights.defined() ? attn_weights.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(attn_weights.size(0) == index_scores.size(0) &&
                  attn_weights.size(2) == index_scores.size(1) &&
                  attn_weights.size(3) == index_scores.size(2),
              fn, ": expected attn_weights [B, H, T, Tk] to match index_scores [B, T, Tk] = ",
              index_scores.sizes(), ", got ", attn_weights.sizes());
  TORCH_CHECK(index_scores.is_floating_point() && attn_weights.is_floating_point(), fn,
              ": expected floating-point inputs, got ", index_scores.scalar_type(), " and ",
              attn_weights.scalar_type());
  const auto compute =
      index_scores.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  torch::Tensor scores = index_scores.to(compute);
  torch::Tensor keep = scores != kNegInf;  // [B, T, Tk]
  // target <- sum_h attn, restricted to the keys the scores can express, renormalised
  torch::Tensor target = attn_weights.detach().to(compute).sum(1) * keep;
  torch::Tensor mass = target.sum(-1, /*keepdim=*/true);
  target = target / mass.clamp_min(1e-9);
  // A fully masked row would make log_softmax NaN (and its gradient NaN): give it zeros.
  torch::Tensor any = keep.any(-1, /*keepdim=*/true);
  torch::Tensor safe = torch::where(any, scores, torch::zeros_like(scores));
  torch::Tensor log_p = torch::log_softmax(safe, -1);
  torch::Tensor terms = torch::where(keep, target * log_p, torch::zeros_like(log_p));
  return -terms.sum(-1).mean();
}

}  // namespace attnkit
