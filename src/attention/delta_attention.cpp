#include <attnkit/attention/delta_attention.h>

#include <attnkit/functional/dot_product_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

namespace attnkit {

namespace {
constexpr const char* kName = "DeltaAttention";
}

DeltaAttentionOptions::DeltaAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

DeltaAttentionImpl::DeltaAttentionImpl(DeltaAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.window() >= 1, kName,
              ": window must be >= 1 (the query's own key is in its window), got ", o.window());
  TORCH_CHECK(o.sink() >= 0, kName, ": sink must be >= 0, got ", o.sink());
  TORCH_CHECK(o.stride() >= 1, kName, ": stride must be >= 1, got ", o.stride());
  reset();
}

DeltaAttentionImpl::DeltaAttentionImpl(int64_t dim, int64_t num_heads)
    : DeltaAttentionImpl(DeltaAttentionOptions(dim, num_heads)) {}

void DeltaAttentionImpl::reset() {
  const int64_t D = options.dim();
  detail::register_zoo_layers(*this, D, options.bias(), q_proj, k_proj, v_proj, o_proj);
}

void DeltaAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void DeltaAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::DeltaAttention(dim=" << options.dim() << ", num_heads=" << options.num_heads()
         << ", window=" << options.window() << ", sink=" << options.sink()
         << ", stride=" << options.stride() << ", bias=" << detail::str(options.bias()) << ")";
}

torch::Tensor DeltaAttentionImpl::sparse_keep_mask(int64_t seq_len_q,
                                                   int64_t seq_len_kv,
                                                   int64_t offset,
                                                   torch::Device device) const {
  auto i64 = torch::TensorOptions().dtype(torch::kLong).device(device);
  torch::Tensor pos = torch::arange(offset, offset + seq_len_q, i64).unsqueeze(1);  // [Tq, 1]
  torch::Tensor key = torch::arange(seq_len_kv, i64).unsqueeze(0);                  // [1, Tk]
  return (key <= pos) & ((key > pos - options.window()) | (key < options.sink()));
}

AttentionOutput DeltaAttentionImpl::run(const torch::Tensor& x,
                                        DecodeState* state,
                                        bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  const int64_t B = x.size(0), T = x.size(1), H = options.num_heads();
  const int64_t hd = options.dim() / H, stride = options.stride();
  const int64_t offset = state ? state->length() : 0;
  const int64_t L = offset + T;  // keys seen so far, this chunk included
  const auto device = x.device();
  auto i64 = torch::TensorOptions().dtype(torch::kLong).device(device);

  torch::Tensor q = q_proj(x).view({B, T, H, hd}).transpose(1, 2);  // [B, H, T, hd]
  torch::Tensor k = k_proj(x).view({B, T, H, hd}).transpose(1, 2);
  torch::Tensor v = v_proj(x).view({B, T, H, hd}).transpose(1, 2);
  if (state) {
    k = state->append("k", k, 2);  // [B, H, L, hd]
    v = state->append("v", v, 2);
    state->advance(T);
  }

  // Sparse base for every row of the chunk.
  DotProductAttentionOptions sparse_opts;
  sparse_opts.mask(sparse_keep_mask(T, L, offset, device)).need_weights(need_weights);
  AttentionResult sparse = functional::dot_product_attention(q, k, v, sparse_opts);

  // Anchors (absolute positions multiple of stride) that fall in this chunk: dense causal
  // attention for their queries, and the correction dense - sparse.
  const int64_t first_anchor = (offset + stride - 1) / stride * stride;
  torch::Tensor anchors = first_anchor < L ? torch::arange(first_anchor, L, stride, i64)
                                           : torch::empty({0}, i64);  // [Na]
  torch::Tensor anchor_rows = anchors - offset;                       // rows in this chunk
  std::vector<torch::Tensor> corrections;
  // The chunk's first rows may belong to the anchor before it (decoding only): its correction
  // was kept in the state.
  if (offset % stride != 0) corrections.push_back(state->get("anchor_delta"));
  AttentionResult dense;
  if (anchors.numel() > 0) {
    torch::Tensor key = torch::arange(L, i64).unsqueeze(0);
    DotProductAttentionOptions dense_opts;
    dense_opts.mask(key <= anchors.unsqueeze(1)).need_weights(need_weights);  // [Na, L]
    dense = functional::dot_product_attention(q.index_select(2, anchor_rows), k, v, dense_opts);
    corrections.push_back(dense.output - sparse.output.index_select(2, anchor_rows));
  }
  // [B, H, anchors used, hd]; empty only for an empty chunk
  torch::Tensor correction =
      corrections.empty() ? torch::zeros_like(sparse.output) : torch::cat(corrections, 2);

  // Row r adds the correction of anchor floor(r / stride) * stride.
  torch::Tensor rows = torch::arange(offset, L, i64);
  torch::Tensor which = rows.div(stride, "floor") - offset / stride;  // index into correction
  torch::Tensor out = sparse.output + correction.index_select(2, which);
  if (state && correction.size(2) > 0)
    state->set("anchor_delta", correction.narrow(2, correction.size(2) - 1, 1).detach());

  out = out.transpose(1, 2).reshape({B, T, options.dim()});
  AttentionOutput result{o_proj(out), torch::Tensor()};
  if (need_weights) {
    // Without a state every row's anchor is in this chunk, so `which` indexes the anchors.
    torch::Tensor gap = dense.weights - sparse.weights.index_select(2, anchor_rows);
    result.attn_weights = sparse.weights + gap.index_select(2, which);
  }
  return result;
}

torch::Tensor DeltaAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, nullptr, false).output;
}

torch::Tensor DeltaAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, &state, false).output;
}

DecodeState DeltaAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput DeltaAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                     const torch::Tensor& attn_mask) {
  TORCH_CHECK(!attn_mask.defined(), mechanism(), ": does not take an attn_mask");
  return run(x, nullptr, true);
}

}  // namespace attnkit
