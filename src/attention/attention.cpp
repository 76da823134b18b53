#include <attnkit/attention/attention.h>

#include <torch/torch.h>

namespace attnkit {
namespace {

// Copies each named tensor of `from` into the same-named tensor of `to` (which must have the
// same names and shapes: both were built from the same options).
void copy_named(const torch::OrderedDict<std::string, torch::Tensor>& from,
                torch::OrderedDict<std::string, torch::Tensor> to,
                const std::string& mechanism,
                const char* what) {
  TORCH_CHECK(from.size() == to.size(), mechanism, ": clone() built a module with ", to.size(), " ",
              what, "s, expected ", from.size(), " (was one registered outside reset()?)");
  for (auto& item : to) {
    const torch::Tensor* source = from.find(item.key());
    TORCH_CHECK(source != nullptr, mechanism, ": clone() found no ", what, " '", item.key(),
                "' in the original (was one registered outside reset()?)");
    // set_data keeps the registered tensor object and swaps in a copy of the source's data, so
    // dtype, device and shape follow the original (as torch::nn::Cloneable does).
    item.value().set_data(source->detach().clone());
    if (item.value().is_leaf()) item.value().set_requires_grad(source->requires_grad());
  }
}

}  // namespace

std::shared_ptr<torch::nn::Module> AttentionImpl::clone(
    const std::optional<torch::Device>& device) const {
  torch::NoGradGuard no_grad;
  std::shared_ptr<AttentionImpl> copy = construct_like();
  copy_named(named_parameters(), copy->named_parameters(), mechanism(), "parameter");
  copy_named(named_buffers(), copy->named_buffers(), mechanism(), "buffer");
  if (device) copy->to(*device);
  copy->train(is_training());
  return copy;
}

void AttentionImpl::clone_(torch::nn::Module& other, const std::optional<torch::Device>& device) {
  torch::NoGradGuard no_grad;
  copy_named(other.named_parameters(), named_parameters(), mechanism(), "parameter");
  copy_named(other.named_buffers(), named_buffers(), mechanism(), "buffer");
  if (device) to(*device);
  train(other.is_training());
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  TORCH_CHECK(!attn_mask.defined(), mechanism(), ": does not take an attn_mask");
  return forward(x);
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  TORCH_CHECK(false, mechanism(), ": does not support decoding (forward with a DecodeState)");
}

DecodeState AttentionImpl::init_state(int64_t batch_size) const {
  TORCH_CHECK(false, mechanism(), ": does not support decoding (init_state)");
}

AttentionOutput AttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                const torch::Tensor& attn_mask) {
  return AttentionOutput{forward(x, attn_mask), torch::Tensor()};
}

DecodeState AttentionImpl::new_state(int64_t batch_size) const {
  TORCH_CHECK(supports_decoding(), mechanism(),
              ": decoding needs a causal mechanism (construct it with causal(true))");
  return DecodeState(static_cast<const AttentionImpl*>(this), mechanism(), batch_size);
}

void AttentionImpl::check_state(const DecodeState& state, const torch::Tensor& x) const {
  TORCH_CHECK(supports_decoding(), mechanism(),
              ": decoding needs a causal mechanism (construct it with causal(true))");
  state.check(static_cast<const AttentionImpl*>(this), mechanism(), x.size(0));
}

}  // namespace attnkit
