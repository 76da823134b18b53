#include <attnkit/attention/combined_attention.h>

#include "attention/dense_common.h"

namespace attnkit {

namespace {

constexpr const char* kName = "CombinedAttention";

// Runs a call into a wrapped module; its errors are re-raised naming the wrapper too.
template <typename Fn>
auto call_inner(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, kName, ": ", e.what_without_backtrace());
  }
}

}  // namespace

CombinedAttentionImpl::CombinedAttentionImpl(Attention attn_a_,
                                             Attention attn_b_,
                                             CombinedAttentionOptions options_)
    : options(std::move(options_)), attn_a(std::move(attn_a_)), attn_b(std::move(attn_b_)) {
  TORCH_CHECK(!attn_a.is_empty(), kName, ": attn_a is an empty holder (nullptr)");
  TORCH_CHECK(!attn_b.is_empty(), kName, ": attn_b is an empty holder (nullptr)");
  TORCH_CHECK(attn_a->dim() == attn_b->dim(), kName, ": attn_a.dim() (", attn_a->dim(),
              ") and attn_b.dim() (", attn_b->dim(), ") must match");
  TORCH_CHECK(options.gate_hidden() >= 0, kName,
              ": gate_hidden must be >= 0 (0 = one Linear), got ", options.gate_hidden());
  TORCH_CHECK(options.dropout() >= 0 && options.dropout() < 1, kName,
              ": dropout must be in [0, 1), got ", options.dropout());
  TORCH_CHECK(!options.residual_proj(), kName,
              ": residual_proj must be false (CombinedAttention carries no input)");
  reset();
}

void CombinedAttentionImpl::reset() {
  register_module("attn_a", attn_a.ptr());
  register_module("attn_b", attn_b.ptr());
  gate = register_module("gate", detail::make_gate(attn_a->dim(), options));
}

void CombinedAttentionImpl::reset_parameters() {
  for (auto& child : gate->children()) {
    if (auto* linear = child->as<torch::nn::Linear>()) linear->reset_parameters();
  }
}

void CombinedAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::CombinedAttention(attn_a=" << attn_a->mechanism()
         << ", attn_b=" << attn_b->mechanism() << ", dim=" << attn_a->dim()
         << ", gate_hidden=" << o.gate_hidden() << ", gate_bias=" << detail::str(o.gate_bias())
         << ", dropout=" << o.dropout() << ")";
}

std::shared_ptr<AttentionImpl> CombinedAttentionImpl::construct_like() const {
  auto a = std::dynamic_pointer_cast<AttentionImpl>(attn_a->clone());
  auto b = std::dynamic_pointer_cast<AttentionImpl>(attn_b->clone());
  TORCH_CHECK(a && b, kName, ": a clone of a wrapped module is not an AttentionImpl");
  return std::make_shared<CombinedAttentionImpl>(Attention(a), Attention(b), options);
}

torch::Tensor CombinedAttentionImpl::gate_values(const torch::Tensor& x) {
  return torch::sigmoid(gate->forward(x));
}

torch::Tensor CombinedAttentionImpl::run(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  detail::check_sequence_input(kName, x, dim(), gate->parameters().front());
  torch::Tensor a = call_inner([&] { return attn_a(x, attn_mask); });
  torch::Tensor b = call_inner([&] { return attn_b(x, attn_mask); });
  torch::Tensor g = gate_values(x);  // [B, T, 1]
  return g * a + (1.0 - g) * b;
}

torch::Tensor CombinedAttentionImpl::forward(const torch::Tensor& x) { return run(x, {}); }

torch::Tensor CombinedAttentionImpl::forward(const torch::Tensor& x,
                                             const torch::Tensor& attn_mask) {
  return run(x, attn_mask);
}

CombinedAttentionOutput CombinedAttentionImpl::forward_with_aux_combined(
    const torch::Tensor& x, const torch::Tensor& attn_mask) {
  detail::check_sequence_input(kName, x, dim(), gate->parameters().front());
  AttentionOutput a = call_inner([&] { return attn_a->forward_with_aux(x, attn_mask); });
  AttentionOutput b = call_inner([&] { return attn_b->forward_with_aux(x, attn_mask); });
  CombinedAttentionOutput out;
  out.gate = gate_values(x);
  out.output = out.gate * a.output + (1.0 - out.gate) * b.output;
  out.attn_weights = a.attn_weights;
  out.attn_weights_b = b.attn_weights;
  return out;
}

AttentionOutput CombinedAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                        const torch::Tensor& attn_mask) {
  CombinedAttentionOutput out = forward_with_aux_combined(x, attn_mask);
  return AttentionOutput{out.output, out.attn_weights};
}

}  // namespace attnkit
