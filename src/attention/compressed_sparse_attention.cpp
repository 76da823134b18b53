#include <attnkit/attention/compressed_sparse_attention.h>

#include <attnkit/functional/flex_attention.h>
#include <attnkit/functional/gather_attention.h>
#include <attnkit/functional/index_topk.h>

#include "attention/compressed_common.h"
#include "attention/dense_common.h"

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

namespace attnkit {

namespace {

constexpr const char* kName = "CompressedSparseAttention";

// Lightning-indexer scores [B, n, ne]: score[t, e] = sum_h wi[t, h] relu(qi[t, h] . keys[e]).
//   qi: [B, n, Hi, di], wi: [B, n, Hi], keys: [B, ne, di]
torch::Tensor index_scores(const torch::Tensor& qi,
                           const torch::Tensor& wi,
                           const torch::Tensor& keys) {
  torch::Tensor dots = torch::einsum("bthd,bsd->bths", {qi, keys}).relu_();
  return torch::einsum("bth,bths->bts", {wi, dots});
}

// The k best visible entries per query, ties going to the earlier entry (what a stable
// descending sort keeps, whatever the row length, so decoding selects what the full forward
// selects). -> int64 [B, n, k], -1 in the slots left when fewer than k are visible.
//   scores: [B, n, ne], -inf exactly where the entry is invisible
torch::Tensor top_k_visible(const torch::Tensor& scores, int64_t k) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  const int64_t B = scores.size(0), n = scores.size(1), ne = scores.size(2);
  const int64_t kc = std::min(k, ne);
  torch::Tensor top = torch::empty({B, n, 0}, scores.options().dtype(torch::kLong));
  if (kc > 0) {
    // the kc best and the next one, sorted descending
    const int64_t probe = std::min(kc + 1, ne);
    torch::Tensor values, indices;
    std::tie(values, indices) = torch::topk(scores, probe, /*dim=*/-1);
    torch::Tensor kth = values.narrow(-1, kc - 1, 1);  // [B, n, 1]
    top = indices.narrow(-1, 0, kc);
    if (probe > kc) {
      // topk breaks ties in no set order. Where a visible entry left out ties with the k-th
      // score, take everything above it, then the earliest tied entries.
      torch::Tensor straddle =
          (values.narrow(-1, kc, 1) == kth).squeeze(-1) & (kth.squeeze(-1) != kNegInf);
      torch::Tensor rows = torch::nonzero(straddle);  // [m, 2]: (b, t)
      if (rows.size(0) > 0) {
        const torch::Tensor b = rows.select(1, 0), t = rows.select(1, 1);
        torch::Tensor sc = scores.index({b, t}), cut = kth.index({b, t});  // [m, ne], [m, 1]
        torch::Tensor above = sc > cut, tie = sc == cut;
        torch::Tensor need = kc - above.sum(-1, /*keepdim=*/true);
        torch::Tensor chosen = above | (tie & (tie.cumsum(-1) <= need));
        top = top.index_put({b, t}, torch::nonzero(chosen).select(1, 1).view({rows.size(0), kc}));
      }
    }
    // fewer than kc visible: topk also took invisible (-inf) entries
    top = top.masked_fill(values.narrow(-1, 0, kc) == kNegInf, -1);
  }
  return kc < k ? torch::constant_pad_nd(top, {0, k - kc}, -1) : top;
}

}  // namespace

CompressedSparseAttentionOptions::CompressedSparseAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

CompressedSparseAttentionImpl::CompressedSparseAttentionImpl(
    CompressedSparseAttentionOptions options_)
    : options(std::move(options_)) {
  auto& o = options;
  detail::check_compressed_options(kName, o.dim(), o.num_heads(), o.compression_rate(), o.kv_dim(),
                                   o.q_lora_rank(), o.num_groups(), o.window(), o.norm_eps());
  TORCH_CHECK(o.top_k() > 0, kName, ": top_k must be positive, got ", o.top_k());
  TORCH_CHECK(o.num_index_heads() > 0, kName, ": num_index_heads must be positive, got ",
              o.num_index_heads());
  TORCH_CHECK(o.index_dim() > 0, kName, ": index_dim must be positive, got ", o.index_dim());
  if (o.kv_dim() == 0) o.kv_dim(o.dim() / o.num_heads());
  if (o.q_lora_rank() == 0) o.q_lora_rank(o.dim() / 2);
  if (o.num_groups() == 0) o.num_groups(o.num_heads());
  reset();
}

CompressedSparseAttentionImpl::CompressedSparseAttentionImpl(int64_t dim, int64_t num_heads)
    : CompressedSparseAttentionImpl(CompressedSparseAttentionOptions(dim, num_heads)) {}

void CompressedSparseAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim(), H = o.num_heads(), c = o.kv_dim(), r = o.compression_rate();
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(o.bias()));
  };
  kv_a = register_module("kv_a", linear(D, c));
  kv_b = register_module("kv_b", linear(D, c));
  z_a = register_module("z_a", linear(D, c));
  z_b = register_module("z_b", linear(D, c));
  bias_a = register_parameter("bias_a", torch::zeros({r, c}));
  bias_b = register_parameter("bias_b", torch::zeros({r, c}));
  q_down = register_module("q_down", linear(D, o.q_lora_rank()));
  q_up = register_module("q_up", linear(o.q_lora_rank(), H * c));
  q_norm = register_parameter("q_norm", torch::ones({c}));
  kv_norm = register_parameter("kv_norm", torch::ones({c}));
  sink = register_parameter("sink", torch::zeros({H}));
  idx_q = register_module("idx_q", linear(o.q_lora_rank(), o.num_index_heads() * o.index_dim()));
  idx_k = register_module("idx_k", linear(c, o.index_dim()));
  idx_w = register_module("idx_w", linear(D, o.num_index_heads()));
  proj = register_module(
      "proj", GroupedOutputProjection(
                  GroupedOutputProjectionOptions(H, c, o.num_groups(), D).bias(o.bias())));
  rope_.reset();
  if (o.rope()) rope_.emplace(*o.rope(), c, kName);
}

void CompressedSparseAttentionImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  detail::reset_linears({kv_a, kv_b, z_a, z_b, q_down, q_up, idx_q, idx_k, idx_w});
  proj->reset_parameters();
  bias_a.zero_();
  bias_b.zero_();
  q_norm.fill_(1.0);
  kv_norm.fill_(1.0);
  sink.zero_();
}

void CompressedSparseAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::CompressedSparseAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", compression_rate=" << o.compression_rate() << ", top_k=" << o.top_k()
         << ", kv_dim=" << o.kv_dim() << ", q_lora_rank=" << o.q_lora_rank()
         << ", num_index_heads=" << o.num_index_heads() << ", index_dim=" << o.index_dim()
         << ", num_groups=" << o.num_groups() << ", window=" << o.window()
         << ", bias=" << detail::str(o.bias()) << ", norm_eps=" << o.norm_eps() << ", rope=";
  if (o.rope()) {
    stream << *o.rope();
  } else {
    stream << "none";
  }
  stream << ")";
}

CompressedSparseOutput CompressedSparseAttentionImpl::run(const torch::Tensor& x,
                                                          const torch::Tensor& attn_mask,
                                                          DecodeState* state,
                                                          bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), kv_a->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1), H = o.num_heads(), c = o.kv_dim();
  const int64_t r = o.compression_rate(), Hi = o.num_index_heads(), di = o.index_dim();
  const int64_t offset = state ? state->length() : 0;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const detail::CompressedSpec spec{
      kName, H, c, r, o.window(), o.norm_eps(), rope_ ? &*rope_ : nullptr};
  const torch::Tensor keep = detail::keep_from_attn_mask(kName, attn_mask, B, T);  // [B', T, T]

  // compressor rows [kv_a | z_a | kv_b | z_b]: [B, T, 4c]; padding: values 0, gates -inf
  torch::Tensor raw = kv_a(x);
  torch::Tensor rows = torch::cat({raw, z_a(x), kv_b(x), z_b(x)}, -1);
  torch::Tensor zeros = torch::zeros({c}, rows.options());
  torch::Tensor gates = torch::full({c}, neg_inf, rows.options());
  detail::NewBlocks blocks =
      detail::take_blocks(state, rows, torch::cat({zeros, gates, zeros, gates}), r);
  torch::Tensor prev =
      state && state->contains("prev_block") ? state->get("prev_block") : torch::Tensor();
  torch::Tensor pooled = detail::compress_blocks_overlapped(blocks.rows, bias_a, bias_b, prev, r);
  if (state && blocks.count > 0) {
    // the kv_b / z_b rows of the last complete block feed the next entry's previous half
    state->set(
        "prev_block",
        blocks.rows.narrow(1, (blocks.count - 1) * r, r).narrow(2, 2 * c, 2 * c).detach().clone());
  }
  torch::Tensor entries = detail::cache_rows(
      state, "entries", detail::finish_entries(spec, pooled, kv_norm, blocks.first_entry));
  const int64_t nb = entries.size(1), k = std::min(o.top_k(), nb);

  // Entries query t may select: complete before t, and (with a mask) every pooled token kept.
  const torch::Tensor entry_mask =
      keep.defined() ? detail::entry_keep_from_mask(keep, nb, r, /*overlapped=*/true)
                     : torch::Tensor();
  // Which entries queries first_query.. (count of them) may see among the first num_entries:
  // bool [B or 1, count, num_entries].
  auto visibility = [&](int64_t first_query, int64_t count, int64_t num_entries) {
    torch::Tensor visible =
        detail::entry_visibility(offset + first_query, count, num_entries, r, x.device())
            .unsqueeze(0);
    if (!entry_mask.defined()) return visible;
    return visible & entry_mask.narrow(1, first_query, count).narrow(2, 0, num_entries);
  };
  torch::Tensor c_q = q_down(x);
  torch::Tensor q = detail::finish_queries(spec, q_up(c_q).view({B, T, H, c}), q_norm, offset);
  detail::RawWindow window =
      detail::raw_window(spec, state, detail::finish_raw(spec, raw, kv_norm, offset), offset);
  // the indexer's queries [B, T, Hi, di] and head weights [B, T, Hi]
  auto indexer_queries = [&] { return std::make_pair(idx_q(c_q).view({B, T, Hi, di}), idx_w(x)); };

  // Fused path: each query gathers its selected entries and its window (gather kernel, sink in
  // the kernel). The masked dense form stays for the attention weights and the reference
  // backend, and runs the dtypes the kernels do not cover.
  const bool gather = !need_weights && functional::sparse_kernels_available(q);
  if (gather) {
    torch::Tensor entry_indices;
    {
      // The selection is not differentiable (the indexer learns from an auxiliary loss).
      torch::NoGradGuard no_grad;
      torch::Tensor index_keys = detail::cache_rows(state, "index_keys", idx_k(pooled));
      auto qw = indexer_queries();
      // The fused indexer over the entries. Their visibility is a prefix per query (the
      // entries complete before it: floor(position / r) of them, O(T) bytes), or with an
      // attn_mask a bool mask [1 or B, T, nb]; no scores either way.
      // No complete entry yet (k = 0): empty lists.
      auto select = functional::IndexTopkOptions().top_k(k);
      if (entry_mask.defined()) {
        select.mask(visibility(0, T, nb));
      } else {
        select.key_limit(
            torch::arange(offset, offset + T, x.options().dtype(torch::kLong)).div(r, "floor"));
      }
      entry_indices = k == 0 ? torch::empty({B, T, 0}, x.options().dtype(torch::kLong))
                             : functional::index_topk(qw.first.unsqueeze(1), index_keys,
                                                      qw.second.unsqueeze(1), select)
                                   .squeeze(1);
    }
    CompressedSparseOutput out;
    out.output = proj(detail::shared_kv_gather_attention(spec, q, entries, entry_indices, window,
                                                         keep, sink, offset));
    if (state) state->advance(T);
    return out;
  }

  torch::Tensor index_keys = detail::cache_rows(state, "index_keys", idx_k(pooled));  // [B, nb, di]
  auto qw = indexer_queries();
  torch::Tensor scores =
      torch::where(visibility(0, T, nb), index_scores(qw.first, qw.second, index_keys), neg_inf);
  // selected <- one-hot of the top-k indices; unused slots (-1) land in a dropped column nb
  torch::Tensor top = top_k_visible(scores.detach(), k);
  torch::Tensor selected = torch::zeros({B, T, nb + 1}, x.options().dtype(torch::kBool))
                               .scatter_(-1, top.masked_fill(top < 0, nb), true)
                               .narrow(-1, 0, nb);
  AttentionResult result = detail::shared_kv_attention(spec, q, entries, selected, window, keep,
                                                       sink, offset, need_weights);
  if (state) state->advance(T);

  CompressedSparseOutput out;
  out.output = proj(result.output);
  out.attn_weights = result.weights;
  out.index_scores = scores;
  out.selected = selected;
  return out;
}

torch::Tensor CompressedSparseAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor CompressedSparseAttentionImpl::forward(const torch::Tensor& x,
                                                     const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor CompressedSparseAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState CompressedSparseAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput CompressedSparseAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                                const torch::Tensor& attn_mask) {
  CompressedSparseOutput out = run(x, attn_mask, nullptr, true);
  return AttentionOutput{out.output, out.attn_weights};
}

CompressedSparseOutput CompressedSparseAttentionImpl::forward_with_aux_sparse(
    const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
