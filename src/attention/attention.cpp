#include <attnkit/attention/attention.h>

namespace attnkit {

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

AttentionOutput AttentionImpl::forward_with_aux(const torch::Tensor& x) {
  return AttentionOutput{forward(x), torch::Tensor()};
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
