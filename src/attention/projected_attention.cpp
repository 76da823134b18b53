#include <attnkit/attention/projected_attention.h>

#include "attention/dense_common.h"

namespace attnkit {

ProjectedAttentionOptions::ProjectedAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

ProjectedAttentionImpl::ProjectedAttentionImpl(ProjectedAttentionOptions options_,
                                               int64_t num_kv_heads,
                                               const char* name)
    : options(std::move(options_)) {
  TORCH_CHECK(options.dim() > 0, name, ": dim must be positive, got ", options.dim());
  TORCH_CHECK(options.num_heads() > 0, name, ": num_heads must be positive, got ",
              options.num_heads());
  TORCH_CHECK(options.dim() % options.num_heads() == 0, name, ": dim (", options.dim(),
              ") must be divisible by num_heads (", options.num_heads(), ")");
  TORCH_CHECK(options.dropout() >= 0 && options.dropout() < 1, name,
              ": dropout must be in [0, 1), got ", options.dropout());
  TORCH_CHECK(options.temperature() > 0, name, ": temperature must be positive, got ",
              options.temperature());
  num_kv_heads_ = num_kv_heads == 0 ? options.num_heads() : num_kv_heads;
}

void ProjectedAttentionImpl::register_projections() {
  const int64_t D = options.dim(), kv_width = num_kv_heads_ * (D / options.num_heads());
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(options.bias()));
  };
  q_proj = register_module("q_proj", linear(D, D));
  k_proj = register_module("k_proj", linear(D, kv_width));
  v_proj = register_module("v_proj", linear(D, kv_width));
  o_proj = register_module("o_proj", linear(D, D));
  // Validates rope.dim against head_dim once, at construction.
  if (options.rope()) rope_.emplace(*options.rope(), D / options.num_heads(), mechanism());
}

void ProjectedAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void ProjectedAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::" << mechanism() << "(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ", causal=" << detail::str(options.causal())
         << ", dropout=" << options.dropout() << ", temperature=" << options.temperature()
         << ", bias=" << detail::str(options.bias()) << ", rope=";
  if (options.rope()) {
    stream << *options.rope();
  } else {
    stream << "none";
  }
  stream << ")";
}

AttentionOutput ProjectedAttentionImpl::run(const torch::Tensor& x,
                                            const torch::Tensor& attn_mask,
                                            DecodeState* state,
                                            bool need_weights) {
  detail::check_sequence_input(mechanism(), x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  detail::GroupedSpec spec;
  spec.mechanism = mechanism();
  spec.num_heads = options.num_heads();
  spec.num_kv_heads = num_kv_heads_;
  spec.head_dim = options.dim() / options.num_heads();
  spec.causal = options.causal();
  spec.dropout = options.dropout();
  spec.temperature = options.temperature();
  detail::GroupedLayers layers;
  layers.q_proj = q_proj;
  layers.k_proj = k_proj;
  layers.v_proj = v_proj;
  layers.o_proj = o_proj;
  layers.rope = rope_ ? &*rope_ : nullptr;
  return detail::grouped_attention(spec, layers, x, attn_mask, state, is_training(), need_weights);
}

torch::Tensor ProjectedAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor ProjectedAttentionImpl::forward(const torch::Tensor& x,
                                              const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor ProjectedAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState ProjectedAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput ProjectedAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                         const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
