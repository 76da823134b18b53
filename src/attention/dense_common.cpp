#include "attention/dense_common.h"

#include <attnkit/functional/dot_product_attention.h>

#include <cmath>

namespace attnkit {
namespace detail {

void reset_linears(std::initializer_list<torch::nn::Linear> layers) {
  for (torch::nn::Linear layer : layers) layer->reset_parameters();
}

void check_sequence_input(const std::string& mechanism,
                          const torch::Tensor& x,
                          int64_t dim,
                          const torch::Tensor& parameter) {
  TORCH_CHECK(x.defined(), mechanism, ": input x is undefined");
  TORCH_CHECK(x.dim() == 3, mechanism, ": expected input x of shape [batch, seq, dim] (3-D), got ",
              x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK(x.size(2) == dim, mechanism, ": expected input x.size(-1) == dim (", dim, "), got ",
              x.size(2));
  TORCH_CHECK(x.is_floating_point(), mechanism, ": expected a floating-point input x, got dtype ",
              x.scalar_type());
  TORCH_CHECK(x.scalar_type() == parameter.scalar_type(), mechanism, ": input x has dtype ",
              x.scalar_type(), " but the parameters are ", parameter.scalar_type(),
              "; move the module with ->to(", x.scalar_type(), ")");
  TORCH_CHECK(x.device() == parameter.device(), mechanism, ": input x is on ", x.device(),
              " but the parameters are on ", parameter.device());
}

void add_attn_mask(const std::string& mechanism,
                   const torch::Tensor& attn_mask,
                   int64_t batch_size,
                   int64_t num_heads,
                   int64_t seq_len,
                   DotProductAttentionOptions& options) {
  if (!attn_mask.defined()) return;
  const int64_t B = batch_size, H = num_heads, T = seq_len;
  auto fail = [&]() {
    TORCH_CHECK(false, mechanism,
                ": expected attn_mask of shape [T, T], [B, T, T] or [B, 1|H, T, T] with B = ", B,
                ", H = ", H, ", T = ", T, ", got ", attn_mask.sizes());
  };
  torch::Tensor m;
  switch (attn_mask.dim()) {
    case 2:
      if (attn_mask.size(0) != T || attn_mask.size(1) != T) fail();
      m = attn_mask.view({1, 1, T, T});
      break;
    case 3:
      if (attn_mask.size(0) != B || attn_mask.size(1) != T || attn_mask.size(2) != T) fail();
      m = attn_mask.unsqueeze(1);
      break;
    case 4:
      if (attn_mask.size(0) != B || (attn_mask.size(1) != 1 && attn_mask.size(1) != H) ||
          attn_mask.size(2) != T || attn_mask.size(3) != T) {
        fail();
      }
      m = attn_mask;
      break;
    default:
      fail();
  }
  if (m.scalar_type() == torch::kBool) {
    options.mask(m);
  } else {
    TORCH_CHECK(m.is_floating_point(), mechanism,
                ": expected attn_mask to be bool (true = attend) or floating (additive), got ",
                m.scalar_type());
    options.bias(m);
  }
}

AttentionOutput grouped_attention(const GroupedSpec& spec,
                                  GroupedLayers layers,
                                  const torch::Tensor& x,
                                  const torch::Tensor& attn_mask,
                                  DecodeState* state,
                                  bool training,
                                  bool need_weights) {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = spec.num_heads, Hkv = spec.num_kv_heads, hd = spec.head_dim;
  const int64_t offset = state ? state->length() : 0;

  // shapes: q [B, T, H, hd], k and v [B, T, Hkv, hd]
  torch::Tensor q = layers.q_proj(x).view({B, T, H, hd});
  torch::Tensor k = layers.k_proj(x).view({B, T, Hkv, hd});
  torch::Tensor v = layers.v_proj(x).view({B, T, Hkv, hd});
  if (layers.q_norm) {
    q = layers.q_norm(q);
    k = layers.k_norm(k);
  }
  if (layers.rope) {
    q = layers.rope->apply(q, offset);
    k = layers.rope->apply(k, offset);
  }
  q = q.transpose(1, 2);  // [B, H, T, hd]
  k = k.transpose(1, 2);  // [B, Hkv, T, hd]
  v = v.transpose(1, 2);
  if (state) {
    k = state->append("k", k, 2);  // [B, Hkv, offset + T, hd]
    v = state->append("v", v, 2);
    state->advance(T);
  }

  DotProductAttentionOptions o;
  o.causal(spec.causal)
      .window_left(spec.window_left)
      .window_right(spec.window_right)
      .sinks(layers.sinks)
      .dropout(training ? spec.dropout : 0.0)
      .need_weights(need_weights);
  // temperature 1 keeps the functional's own 1/sqrt(hd), bit for bit
  if (spec.temperature != 1.0) {
    o.scale(1.0 / (std::sqrt(static_cast<double>(hd)) * spec.temperature));
  }
  add_attn_mask(spec.mechanism, attn_mask, B, H, T, o);
  AttentionResult r = functional::dot_product_attention(q, k, v, o);

  torch::Tensor out = r.output.transpose(1, 2).reshape({B, T, H * hd});  // [B, T, H*hd]
  if (layers.gate_proj) out = out * torch::sigmoid(layers.gate_proj(x));
  return AttentionOutput{layers.o_proj(out), r.weights};
}

}  // namespace detail
}  // namespace attnkit
