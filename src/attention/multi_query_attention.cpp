#include <attnkit/attention/multi_query_attention.h>

#include "attention/dense_common.h"

namespace attnkit {

namespace {
constexpr const char* kName = "MultiQueryAttention";
}

MultiQueryAttentionOptions::MultiQueryAttentionOptions(int64_t dim, int64_t num_heads) : dim_(dim), num_heads_(num_heads) {}

MultiQueryAttentionImpl::MultiQueryAttentionImpl(MultiQueryAttentionOptions options_) : options(std::move(options_)) {
  TORCH_CHECK(options.dim() > 0, kName, ": dim must be positive, got ", options.dim());
  TORCH_CHECK(options.num_heads() > 0, kName, ": num_heads must be positive, got ",
              options.num_heads());
  TORCH_CHECK(options.dim() % options.num_heads() == 0, kName, ": dim (", options.dim(),
              ") must be divisible by num_heads (", options.num_heads(), ")");
  TORCH_CHECK(options.dropout() >= 0 && options.dropout() < 1, kName,
              ": dropout must be in [0, 1), got ", options.dropout());
  reset();
}

MultiQueryAttentionImpl::MultiQueryAttentionImpl(int64_t dim, int64_t num_heads) : MultiQueryAttentionImpl(MultiQueryAttentionOptions(dim, num_heads)) {}

void MultiQueryAttentionImpl::reset() {
  const int64_t D = options.dim(), kv_width = 1 * (D / options.num_heads());
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(options.bias()));
  };
  q_proj = register_module("q_proj", linear(D, D));
  k_proj = register_module("k_proj", linear(D, kv_width));
  v_proj = register_module("v_proj", linear(D, kv_width));
  o_proj = register_module("o_proj", linear(D, D));
}

void MultiQueryAttentionImpl::reset_parameters() {
  for (auto* linear : {q_proj.get(), k_proj.get(), v_proj.get(), o_proj.get()}) {
    linear->reset_parameters();
  }
}

void MultiQueryAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::MultiQueryAttention(dim=" << options.dim() << ", num_heads=" << options.num_heads()
         << ", causal=" << detail::str(options.causal()) << ", dropout=" << options.dropout()
         << ", bias=" << detail::str(options.bias()) << ")";
}

AttentionOutput MultiQueryAttentionImpl::run(const torch::Tensor& x,
                                const torch::Tensor& attn_mask,
                                DecodeState* state,
                                bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  detail::GroupedSpec spec;
  spec.mechanism = kName;
  spec.num_heads = options.num_heads();
  spec.num_kv_heads = 1;
  spec.head_dim = options.dim() / options.num_heads();
  spec.causal = options.causal();
  spec.dropout = options.dropout();
  detail::GroupedLayers layers;
  layers.q_proj = q_proj;
  layers.k_proj = k_proj;
  layers.v_proj = v_proj;
  layers.o_proj = o_proj;
  return detail::grouped_attention(spec, layers, x, attn_mask, state, is_training(), need_weights);
}

torch::Tensor MultiQueryAttentionImpl::forward(const torch::Tensor& x) { return run(x, {}, nullptr, false).output; }

torch::Tensor MultiQueryAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor MultiQueryAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState MultiQueryAttentionImpl::init_state(int64_t batch_size) const { return new_state(batch_size); }

AttentionOutput MultiQueryAttentionImpl::forward_with_aux(const torch::Tensor& x) {
  return run(x, {}, nullptr, true);
}

}  // namespace attnkit
