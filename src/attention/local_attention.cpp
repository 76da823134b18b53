#include <attnkit/attention/local_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <cmath>

namespace attnkit {

namespace {
constexpr const char* kName = "LocalAttention";
}

LocalAttentionOptions::LocalAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

LocalAttentionImpl::LocalAttentionImpl(LocalAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.window_size() > 0, kName, ": window_size must be positive, got ", o.window_size());
  detail::check_temperature_and_dropout(kName, o.temperature(), o.dropout());
  reset();
}

LocalAttentionImpl::LocalAttentionImpl(int64_t dim, int64_t num_heads)
    : LocalAttentionImpl(LocalAttentionOptions(dim, num_heads)) {}

void LocalAttentionImpl::reset() {
  detail::register_zoo_layers(*this, options.dim(), options.bias(), q_proj, k_proj, v_proj, o_proj);
  // Validates rope.dim against head_dim once, at construction.
  if (options.rope()) rope_.emplace(*options.rope(), options.dim() / options.num_heads(), kName);
}

void LocalAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void LocalAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::LocalAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", window_size=" << o.window_size() << ", causal=" << detail::str(o.causal())
         << ", temperature=" << o.temperature() << ", dropout=" << o.dropout()
         << ", bias=" << detail::str(o.bias()) << ", rope=";
  detail::print_rope(stream, o.rope());
  stream << ")";
}

torch::Tensor LocalAttentionImpl::keep_mask(int64_t seq_len) const {
  TORCH_CHECK(seq_len > 0, kName, ": keep_mask seq_len must be positive, got ", seq_len);
  const int64_t half = options.window_size() / 2;
  torch::Tensor i = torch::arange(seq_len, torch::kLong).unsqueeze(1);
  torch::Tensor j = torch::arange(seq_len, torch::kLong).unsqueeze(0);
  torch::Tensor keep = (j >= i - half) & (j <= i + (options.causal() ? 0 : half));
  return keep;
}

AttentionOutput LocalAttentionImpl::run(const torch::Tensor& x,
                                        const torch::Tensor& attn_mask,
                                        DecodeState* state,
                                        bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t half = o.window_size() / 2;
  const double head_dim = static_cast<double>(o.dim() / o.num_heads());
  // The window as positional rules (bottom-right aligned, so a decoding chunk whose keys are
  // the cached window plus the chunk sees the right keys).
  DotProductAttentionOptions attn;
  attn.scale(1.0 / (std::sqrt(head_dim) * o.temperature()))
      .causal(o.causal())
      .window_left(half)
      .dropout(is_training() ? o.dropout() : 0.0);
  if (!o.causal()) attn.window_right(half);
  detail::ZooLayers layers{q_proj, k_proj, v_proj, o_proj, rope_ ? &*rope_ : nullptr};
  return detail::zoo_attention(kName, layers, o.num_heads(), x, attn_mask, attn, state,
                               need_weights, /*cache_window=*/half);
}

torch::Tensor LocalAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor LocalAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor LocalAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState LocalAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput LocalAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                     const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
