#include <attnkit/attention/compressed_sparse_attention.h>

#include "attention/compressed_common.h"
#include "attention/dense_common.h"

#include <algorithm>
#include <limits>

namespace attnkit {

namespace {
constexpr const char* kName = "CompressedSparseAttention";
}

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
  for (auto* linear : {&kv_a, &kv_b, &z_a, &z_b, &q_down, &q_up, &idx_q, &idx_k, &idx_w}) {
    (*linear)->reset_parameters();
  }
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

  // compressor rows [kv_a | z_a | kv_b | z_b]: [B, T, 4c]; padding: values 0, gates -inf
  torch::Tensor raw = kv_a(x);
  torch::Tensor rows = torch::cat({raw, z_a(x), kv_b(x), z_b(x)}, -1);
  torch::Tensor zeros = torch::zeros({c}), gates = torch::full({c}, neg_inf);
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
  torch::Tensor index_keys = detail::cache_rows(state, "index_keys", idx_k(pooled));  // [B, nb, di]
  const int64_t nb = entries.size(1);

  // Lightning indexer: score[t, e] = sum_h w[t, h] relu(qi[t, h] . ki[e]), invisible -> -inf
  torch::Tensor c_q = q_down(x);
  torch::Tensor qi = idx_q(c_q).view({B, T, Hi, di});
  torch::Tensor dots = torch::relu(torch::einsum("bthd,bsd->bths", {qi, index_keys}));
  torch::Tensor scores = torch::einsum("bth,bths->bts", {idx_w(x), dots});  // [B, T, nb]
  torch::Tensor visible = detail::entry_visibility(offset, T, nb, r, x.device()).unsqueeze(0);
  scores = scores.masked_fill(visible.logical_not(), neg_inf);
  torch::Tensor selected = torch::zeros({B, T, nb}, x.options().dtype(torch::kBool));
  const int64_t k = std::min(o.top_k(), nb);
  if (k > 0) {
    // A stable descending sort breaks ties (e.g. scores that relu made 0) towards the earlier
    // entry, whatever the number of columns, so decoding selects what the full forward selects.
    torch::Tensor order =
        std::get<1>(scores.detach().sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true));
    selected.scatter_(-1, order.narrow(-1, 0, k), true);
    selected = selected & visible;  // fewer than k visible: top-k also picked -inf entries
  }

  torch::Tensor q = detail::finish_queries(spec, q_up(c_q).view({B, T, H, c}), q_norm, offset);
  detail::RawWindow window =
      detail::raw_window(spec, state, detail::finish_raw(spec, raw, kv_norm, offset), offset);
  AttentionResult result =
      detail::shared_kv_attention(spec, q, entries, selected, window, sink, offset, need_weights);
  if (state) state->advance(T);

  CompressedSparseOutput out;
  out.output = proj(result.output);
  out.attn_weights = result.weights;
  out.index_scores = scores;
  out.selected = selected;
  return out;
}

torch::Tensor CompressedSparseAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, nullptr, false).output;
}

torch::Tensor CompressedSparseAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, &state, false).output;
}

DecodeState CompressedSparseAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput CompressedSparseAttentionImpl::forward_with_aux(const torch::Tensor& x) {
  CompressedSparseOutput out = run(x, nullptr, true);
  return AttentionOutput{out.output, out.attn_weights};
}

CompressedSparseOutput CompressedSparseAttentionImpl::forward_with_aux_sparse(
    const torch::Tensor& x) {
  return run(x, nullptr, true);
}

}  // namespace attnkit
