#include <attnkit/attention/alibi_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <cmath>
#include <vector>

namespace attnkit {

namespace {

constexpr const char* kName = "ALiBiAttention";

// (2^(-8/n))^(h+1) for h < n, n a power of two.
std::vector<double> power_of_two_slopes(int64_t n) {
  const double start = std::pow(2.0, -8.0 / static_cast<double>(n));
  std::vector<double> slopes(n);
  for (int64_t h = 0; h < n; ++h) slopes[h] = std::pow(start, static_cast<double>(h + 1));
  return slopes;
}

}  // namespace

torch::Tensor alibi_slopes(int64_t num_heads) {
  TORCH_CHECK(num_heads > 0, "alibi_slopes: num_heads must be positive, got ", num_heads);
  int64_t p = 1;
  while (p * 2 <= num_heads) p *= 2;
  std::vector<double> slopes = power_of_two_slopes(p);
  if (p < num_heads) {
    std::vector<double> extra = power_of_two_slopes(2 * p);
    for (int64_t i = 0; static_cast<int64_t>(slopes.size()) < num_heads; i += 2) {
      slopes.push_back(extra[i]);
    }
  }
  return torch::tensor(slopes, torch::kDouble).to(torch::kFloat);
}

torch::Tensor alibi_bias(const torch::Tensor& slopes, int64_t seq_len_q, int64_t seq_len_kv) {
  TORCH_CHECK(slopes.defined() && slopes.dim() == 1,
              "alibi_bias: expected slopes of shape [H], got ",
              slopes.defined() ? slopes.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(seq_len_q >= 0 && seq_len_kv >= seq_len_q, "alibi_bias: expected 0 <= seq_len_q (",
              seq_len_q, ") <= seq_len_kv (", seq_len_kv, ")");
  auto opts = torch::TensorOptions().dtype(slopes.scalar_type()).device(slopes.device());
  torch::Tensor pos = torch::arange(seq_len_kv - seq_len_q, seq_len_kv, opts).unsqueeze(1);
  torch::Tensor key = torch::arange(seq_len_kv, opts).unsqueeze(0);
  torch::Tensor distance = (pos - key).abs();               // [Tq, Tk]
  return -slopes.view({-1, 1, 1}) * distance.unsqueeze(0);  // [H, Tq, Tk]
}

ALiBiAttentionOptions::ALiBiAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

ALiBiAttentionImpl::ALiBiAttentionImpl(ALiBiAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  detail::check_temperature_and_dropout(kName, o.temperature(), o.dropout());
  reset();
}

ALiBiAttentionImpl::ALiBiAttentionImpl(int64_t dim, int64_t num_heads)
    : ALiBiAttentionImpl(ALiBiAttentionOptions(dim, num_heads)) {}

void ALiBiAttentionImpl::reset() {
  detail::register_zoo_layers(*this, options.dim(), options.bias(), q_proj, k_proj, v_proj, o_proj);
}

void ALiBiAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void ALiBiAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::ALiBiAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", causal=" << detail::str(o.causal()) << ", temperature=" << o.temperature()
         << ", dropout=" << o.dropout() << ", bias=" << detail::str(o.bias()) << ")";
}

AttentionOutput ALiBiAttentionImpl::run(const torch::Tensor& x,
                                        const torch::Tensor& attn_mask,
                                        DecodeState* state,
                                        bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t T = x.size(1);
  const int64_t L = (state ? state->length() : 0) + T;
  const double head_dim = static_cast<double>(o.dim() / o.num_heads());
  torch::Tensor slopes = alibi_slopes(o.num_heads()).to(x.device(), x.scalar_type());
  DotProductAttentionOptions attn;
  attn.scale(1.0 / (std::sqrt(head_dim) * o.temperature()))
      .causal(o.causal())
      .bias(alibi_bias(slopes, T, L).unsqueeze(0))  // [1, H, T, L]
      .dropout(is_training() ? o.dropout() : 0.0);
  detail::ZooLayers layers{q_proj, k_proj, v_proj, o_proj};
  return detail::zoo_attention(kName, layers, o.num_heads(), x, attn_mask, attn, state,
                               need_weights);
}

torch::Tensor ALiBiAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor ALiBiAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor ALiBiAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState ALiBiAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput ALiBiAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                     const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
