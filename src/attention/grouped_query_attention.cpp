#include <attnkit/attention/grouped_query_attention.h>

#include "attention/dense_common.h"

namespace attnkit {

namespace {
constexpr const char* kName = "GroupedQueryAttention";
}

GroupedQueryAttentionOptions::GroupedQueryAttentionOptions(int64_t dim,
                                                           int64_t num_heads,
                                                           int64_t num_kv_heads)
    : dim_(dim), num_heads_(num_heads), num_kv_heads_(num_kv_heads) {}

GroupedQueryAttentionImpl::GroupedQueryAttentionImpl(GroupedQueryAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, kName, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.num_kv_heads() > 0, kName, ": num_kv_heads must be positive, got ",
              o.num_kv_heads());
  TORCH_CHECK(o.head_dim() >= 0, kName, ": head_dim must be >= 0 (0 = dim / num_heads), got ",
              o.head_dim());
  if (o.head_dim() == 0) {
    TORCH_CHECK(o.dim() % o.num_heads() == 0, kName, ": dim (", o.dim(),
                ") must be divisible by num_heads (", o.num_heads(), ") when head_dim is 0");
    options.head_dim(o.dim() / o.num_heads());
  }
  TORCH_CHECK(o.num_heads() % o.num_kv_heads() == 0, kName, ": num_heads (", o.num_heads(),
              ") must be divisible by num_kv_heads (", o.num_kv_heads(), ")");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, kName, ": dropout must be in [0, 1), got ",
              o.dropout());
  TORCH_CHECK(o.temperature() > 0, kName, ": temperature must be positive, got ", o.temperature());
  if (o.qk_norm_eps()) {
    TORCH_CHECK(*o.qk_norm_eps() >= 0, kName, ": qk_norm_eps must be >= 0, got ", *o.qk_norm_eps());
  }
  if (o.window_left()) {
    TORCH_CHECK(*o.window_left() >= 0, kName, ": window_left must be >= 0, got ", *o.window_left());
  }
  if (o.window_right()) {
    TORCH_CHECK(*o.window_right() >= 0, kName, ": window_right must be >= 0, got ",
                *o.window_right());
    TORCH_CHECK(!o.causal(), kName, ": window_right (", *o.window_right(),
                ") has no meaning with causal(true)");
  }
  reset();
}

GroupedQueryAttentionImpl::GroupedQueryAttentionImpl(int64_t dim,
                                                     int64_t num_heads,
                                                     int64_t num_kv_heads)
    : GroupedQueryAttentionImpl(GroupedQueryAttentionOptions(dim, num_heads, num_kv_heads)) {}

void GroupedQueryAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim(), H = o.num_heads(), Hkv = o.num_kv_heads(), hd = o.head_dim();
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(o.bias()));
  };
  q_proj = register_module("q_proj", linear(D, H * hd));
  k_proj = register_module("k_proj", linear(D, Hkv * hd));
  v_proj = register_module("v_proj", linear(D, Hkv * hd));
  o_proj = register_module("o_proj", linear(H * hd, D));
  if (o.output_gate()) gate_proj = register_module("gate_proj", linear(D, H * hd));
  if (o.qk_norm_eps()) {
    auto norm = RMSNormOptions(hd).eps(*o.qk_norm_eps()).zero_centered(o.qk_norm_zero_centered());
    q_norm = register_module("q_norm", RMSNorm(norm));
    k_norm = register_module("k_norm", RMSNorm(norm));
  }
  if (o.sinks()) sinks = register_parameter("sinks", torch::zeros({H}));
  // Validates rope.dim against head_dim once, at construction.
  if (o.rope()) rope_.emplace(*o.rope(), hd, kName);
}

void GroupedQueryAttentionImpl::reset_parameters() {
  for (auto& child : children()) {
    if (auto* linear = child->as<torch::nn::Linear>()) linear->reset_parameters();
    if (auto* norm = child->as<RMSNorm>()) norm->reset_parameters();
  }
  if (sinks.defined()) {
    torch::NoGradGuard no_grad;
    sinks.zero_();
  }
}

void GroupedQueryAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::GroupedQueryAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", num_kv_heads=" << o.num_kv_heads() << ", head_dim=" << o.head_dim()
         << ", causal=" << detail::str(o.causal()) << ", dropout=" << o.dropout()
         << ", temperature=" << o.temperature() << ", bias=" << detail::str(o.bias())
         << ", qk_norm_eps=";
  if (o.qk_norm_eps()) {
    stream << *o.qk_norm_eps();
  } else {
    stream << "none";
  }
  stream << ", qk_norm_zero_centered=" << detail::str(o.qk_norm_zero_centered()) << ", rope=";
  if (o.rope()) {
    stream << *o.rope();
  } else {
    stream << "none";
  }
  stream << ", output_gate=" << detail::str(o.output_gate()) << ", window_left=";
  if (o.window_left()) {
    stream << *o.window_left();
  } else {
    stream << "none";
  }
  stream << ", window_right=";
  if (o.window_right()) {
    stream << *o.window_right();
  } else {
    stream << "none";
  }
  stream << ", sinks=" << detail::str(o.sinks()) << ")";
}

AttentionOutput GroupedQueryAttentionImpl::run(const torch::Tensor& x,
                                               const torch::Tensor& attn_mask,
                                               DecodeState* state,
                                               bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  detail::GroupedSpec spec{kName,
                           options.num_heads(),
                           options.num_kv_heads(),
                           options.head_dim(),
                           options.causal(),
                           options.dropout(),
                           options.window_left(),
                           options.window_right(),
                           options.temperature()};
  detail::GroupedLayers layers{
      q_proj, k_proj, v_proj, o_proj, gate_proj, q_norm, k_norm, rope_ ? &*rope_ : nullptr, sinks};
  return detail::grouped_attention(spec, layers, x, attn_mask, state, is_training(), need_weights);
}

torch::Tensor GroupedQueryAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor GroupedQueryAttentionImpl::forward(const torch::Tensor& x,
                                                 const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor GroupedQueryAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState GroupedQueryAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput GroupedQueryAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                            const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
