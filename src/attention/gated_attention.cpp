#include <attnkit/attention/gated_attention.h>

#include "attention/dense_common.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>

namespace attnkit {

namespace {

constexpr const char* kName = "GatedAttention";

// Runs a call into the wrapped module; its errors are re-raised naming the wrapper too.
template <typename Fn>
auto call_inner(const char* wrapper, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, wrapper, ": ", e.what_without_backtrace());
  }
}

}  // namespace

namespace detail {

torch::nn::Sequential make_gate(int64_t dim, const GatedAttentionOptions& o) {
  if (o.gate_hidden() == 0) {
    return torch::nn::Sequential(
        torch::nn::Linear(torch::nn::LinearOptions(dim, 1).bias(o.gate_bias())));
  }
  return torch::nn::Sequential(
      torch::nn::Linear(torch::nn::LinearOptions(dim, o.gate_hidden()).bias(o.gate_bias())),
      torch::nn::GELU(), torch::nn::Dropout(o.dropout()),
      torch::nn::Linear(torch::nn::LinearOptions(o.gate_hidden(), 1).bias(o.gate_bias())));
}

}  // namespace detail

GatedAttentionImpl::GatedAttentionImpl(Attention attn_, GatedAttentionOptions options_)
    : options(std::move(options_)), attn(std::move(attn_)) {
  TORCH_CHECK(!attn.is_empty(), kName, ": attn is an empty holder (nullptr)");
  TORCH_CHECK(options.gate_hidden() >= 0, kName,
              ": gate_hidden must be >= 0 (0 = one Linear), got ", options.gate_hidden());
  TORCH_CHECK(options.dropout() >= 0 && options.dropout() < 1, kName,
              ": dropout must be in [0, 1), got ", options.dropout());
  reset();
}

void GatedAttentionImpl::reset() {
  register_module("attn", attn.ptr());
  gate = register_module("gate", detail::make_gate(attn->dim(), options));
  if (options.residual_proj()) {
    x_proj = register_module("x_proj", torch::nn::Linear(attn->dim(), attn->dim()));
  }
}

void GatedAttentionImpl::reset_parameters() {
  for (auto& child : gate->children()) {
    if (auto* linear = child->as<torch::nn::Linear>()) linear->reset_parameters();
  }
  if (x_proj) x_proj->reset_parameters();
}

void GatedAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::GatedAttention(attn=" << attn->mechanism() << ", dim=" << attn->dim()
         << ", gate_hidden=" << o.gate_hidden() << ", gate_bias=" << detail::str(o.gate_bias())
         << ", dropout=" << o.dropout() << ", residual_proj=" << detail::str(o.residual_proj())
         << ")";
}

std::shared_ptr<AttentionImpl> GatedAttentionImpl::construct_like() const {
  auto inner = std::dynamic_pointer_cast<AttentionImpl>(attn->clone());
  TORCH_CHECK(inner, kName, ": clone of the wrapped ", attn->mechanism(),
              " is not an AttentionImpl");
  return std::make_shared<GatedAttentionImpl>(Attention(inner), options);
}

torch::Tensor GatedAttentionImpl::gate_values(const torch::Tensor& x) {
  return torch::sigmoid(gate->forward(x));
}

torch::Tensor GatedAttentionImpl::combine(const torch::Tensor& x, const torch::Tensor& attended) {
  torch::Tensor g = gate_values(x);  // [B, T, 1]
  torch::Tensor carry = x_proj ? x_proj(x) : x;
  return g * attended + (1.0 - g) * carry;
}

torch::Tensor GatedAttentionImpl::forward(const torch::Tensor& x) {
  detail::check_sequence_input(kName, x, dim(), gate->parameters().front());
  return combine(x, call_inner(kName, [&] { return attn(x); }));
}

torch::Tensor GatedAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  detail::check_sequence_input(kName, x, dim(), gate->parameters().front());
  return combine(x, call_inner(kName, [&] { return attn(x, attn_mask); }));
}

torch::Tensor GatedAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  detail::check_sequence_input(kName, x, dim(), gate->parameters().front());
  // The state belongs to the wrapped module, which checks it.
  return combine(x, call_inner(kName, [&] { return attn(x, state); }));
}

DecodeState GatedAttentionImpl::init_state(int64_t batch_size) const {
  TORCH_CHECK(attn->supports_decoding(), kName, ": the wrapped ", attn->mechanism(),
              " does not support decoding (it needs a causal mechanism)");
  return attn->init_state(batch_size);
}

GatedAttentionOutput GatedAttentionImpl::forward_with_aux_gated(const torch::Tensor& x,
                                                               const torch::Tensor& attn_mask) {
  detail::check_sequence_input(kName, x, dim(), gate->parameters().front());
  AttentionOutput inner = call_inner(kName, [&] { return attn->forward_with_aux(x, attn_mask); });
  GatedAttentionOutput out;
  out.gate = gate_values(x);
  torch::Tensor carry = x_proj ? x_proj(x) : x;
  out.output = out.gate * inner.output + (1.0 - out.gate) * carry;
  out.attn_weights = inner.attn_weights;
  return out;
}

AttentionOutput GatedAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                     const torch::Tensor& attn_mask) {
  GatedAttentionOutput out = forward_with_aux_gated(x, attn_mask);
  return AttentionOutput{out.output, out.attn_weights};
}

}  // namespace attnkit
