#include <attnkit/attention/dilated_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <cmath>

namespace attnkit {

namespace {
constexpr const char* kName = "DilatedAttention";
}

DilatedAttentionOptions::DilatedAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

DilatedAttentionImpl::DilatedAttentionImpl(DilatedAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.dilation_rate() > 0, kName, ": dilation_rate must be positive, got ",
              o.dilation_rate());
  detail::check_temperature_and_dropout(kName, o.temperature(), o.dropout());
  reset();
}

DilatedAttentionImpl::DilatedAttentionImpl(int64_t dim, int64_t num_heads)
    : DilatedAttentionImpl(DilatedAttentionOptions(dim, num_heads)) {}

void DilatedAttentionImpl::reset() {
  detail::register_zoo_layers(*this, options.dim(), options.bias(), q_proj, k_proj, v_proj, o_proj);
  // Validates rope.dim against head_dim once, at construction.
  if (options.rope()) rope_.emplace(*options.rope(), options.dim() / options.num_heads(), kName);
}

void DilatedAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void DilatedAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::DilatedAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", dilation_rate=" << o.dilation_rate() << ", temperature=" << o.temperature()
         << ", dropout=" << o.dropout() << ", bias=" << detail::str(o.bias()) << ", rope=";
  detail::print_rope(stream, o.rope());
  stream << ")";
}

torch::Tensor DilatedAttentionImpl::keep_mask(int64_t seq_len) const {
  TORCH_CHECK(seq_len > 0, kName, ": keep_mask seq_len must be positive, got ", seq_len);
  torch::Tensor i = torch::arange(seq_len, torch::kLong).unsqueeze(1);
  torch::Tensor j = torch::arange(seq_len, torch::kLong).unsqueeze(0);
  // (j - i) mod r == 0, written on the non-negative |j - i| so the sign convention of % is moot.
  return (j - i).abs().remainder(options.dilation_rate()) == 0;
}

AttentionOutput DilatedAttentionImpl::run(const torch::Tensor& x,
                                          const torch::Tensor& attn_mask,
                                          bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  const auto& o = options;
  const double head_dim = static_cast<double>(o.dim() / o.num_heads());
  DotProductAttentionOptions attn;
  attn.scale(1.0 / (std::sqrt(head_dim) * o.temperature()))
      .dropout(is_training() ? o.dropout() : 0.0);
  if (o.dilation_rate() > 1) attn.mask(keep_mask(x.size(1)).to(x.device()));
  detail::ZooLayers layers{q_proj, k_proj, v_proj, o_proj, rope_ ? &*rope_ : nullptr};
  return detail::zoo_attention(kName, layers, o.num_heads(), x, attn_mask, attn, nullptr,
                               need_weights);
}

torch::Tensor DilatedAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, false).output;
}

torch::Tensor DilatedAttentionImpl::forward(const torch::Tensor& x,
                                            const torch::Tensor& attn_mask) {
  return run(x, attn_mask, false).output;
}

AttentionOutput DilatedAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                       const torch::Tensor& attn_mask) {
  return run(x, attn_mask, true);
}

}  // namespace attnkit
