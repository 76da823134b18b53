#include <attnkit/attention/longformer_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <cmath>

namespace attnkit {

namespace {
constexpr const char* kName = "LongformerAttention";
}

LongformerAttentionOptions::LongformerAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

LongformerAttentionImpl::LongformerAttentionImpl(LongformerAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.window_size() > 0, kName, ": window_size must be positive, got ", o.window_size());
  for (int64_t p : o.global_positions()) {
    TORCH_CHECK(p >= 0, kName, ": global_positions must be >= 0, got ", p);
  }
  detail::check_temperature_and_dropout(kName, o.temperature(), o.dropout());
  reset();
}

LongformerAttentionImpl::LongformerAttentionImpl(int64_t dim, int64_t num_heads)
    : LongformerAttentionImpl(LongformerAttentionOptions(dim, num_heads)) {}

void LongformerAttentionImpl::reset() {
  detail::register_zoo_layers(*this, options.dim(), options.bias(), q_proj, k_proj, v_proj, o_proj);
  // Validates rope.dim against head_dim once, at construction.
  if (options.rope()) rope_.emplace(*options.rope(), options.dim() / options.num_heads(), kName);
}

void LongformerAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void LongformerAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::LongformerAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", window_size=" << o.window_size() << ", global_positions=[";
  for (size_t i = 0; i < o.global_positions().size(); ++i) {
    stream << (i ? ", " : "") << o.global_positions()[i];
  }
  stream << "], temperature=" << o.temperature() << ", dropout=" << o.dropout()
         << ", bias=" << detail::str(o.bias()) << ", rope=";
  detail::print_rope(stream, o.rope());
  stream << ")";
}

torch::Tensor LongformerAttentionImpl::keep_mask(int64_t seq_len) const {
  TORCH_CHECK(seq_len > 0, kName, ": keep_mask seq_len must be positive, got ", seq_len);
  const int64_t half = options.window_size() / 2;
  torch::Tensor i = torch::arange(seq_len, torch::kLong).unsqueeze(1);
  torch::Tensor j = torch::arange(seq_len, torch::kLong).unsqueeze(0);
  torch::Tensor keep = (i - j).abs() <= half;
  for (int64_t p : options.global_positions()) {
    if (p >= seq_len) continue;
    keep[p].fill_(true);
    keep.select(1, p).fill_(true);
  }
  return keep;
}

AttentionOutput LongformerAttentionImpl::run(const torch::Tensor& x,
                                             const torch::Tensor& global_mask,
                                             const torch::Tensor& attn_mask,
                                             bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1);
  torch::Tensor keep = keep_mask(T).to(x.device());  // [T, T]
  if (global_mask.defined()) {
    TORCH_CHECK(global_mask.scalar_type() == torch::kBool, kName,
                ": expected global_mask of dtype bool (true = global), got ",
                global_mask.scalar_type());
    const bool vector = global_mask.dim() == 1 && global_mask.size(0) == T;
    const bool batch =
        global_mask.dim() == 2 && global_mask.size(0) == B && global_mask.size(1) == T;
    TORCH_CHECK(vector || batch, kName, ": expected global_mask of shape [T] = [", T,
                "] or [B, T] = [", B, ", ", T, "], got ", global_mask.sizes());
    torch::Tensor g = global_mask.to(x.device()).view({vector ? 1 : B, 1, T});  // [B|1, 1, T]
    keep = keep | g.transpose(1, 2) | g;                                        // [B|1, T, T]
    keep = keep.unsqueeze(1);                                                   // [B|1, 1, T, T]
  }
  const double head_dim = static_cast<double>(o.dim() / o.num_heads());
  DotProductAttentionOptions attn;
  attn.scale(1.0 / (std::sqrt(head_dim) * o.temperature()))
      .dropout(is_training() ? o.dropout() : 0.0)
      .mask(keep);
  detail::ZooLayers layers{q_proj, k_proj, v_proj, o_proj, rope_ ? &*rope_ : nullptr};
  return detail::zoo_attention(kName, layers, o.num_heads(), x, attn_mask, attn, nullptr,
                               need_weights);
}

torch::Tensor LongformerAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, {}, false).output;
}

torch::Tensor LongformerAttentionImpl::forward(const torch::Tensor& x,
                                               const torch::Tensor& attn_mask) {
  return run(x, {}, attn_mask, false).output;
}

torch::Tensor LongformerAttentionImpl::forward_global(const torch::Tensor& x,
                                                      const torch::Tensor& global_mask,
                                                      const torch::Tensor& attn_mask) {
  TORCH_CHECK(global_mask.defined(), kName, ": global_mask is undefined");
  return run(x, global_mask, attn_mask, false).output;
}

AttentionOutput LongformerAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                          const torch::Tensor& attn_mask) {
  return run(x, {}, attn_mask, true);
}

AttentionOutput LongformerAttentionImpl::forward_with_aux_global(const torch::Tensor& x,
                                                                 const torch::Tensor& global_mask,
                                                                 const torch::Tensor& attn_mask) {
  TORCH_CHECK(global_mask.defined(), kName, ": global_mask is undefined");
  return run(x, global_mask, attn_mask, true);
}

}  // namespace attnkit
