#pragma once
// A learned per-token mix of two attention modules: y = g * A(x) + (1 - g) * B(x).
// attzoo's CombinedAttention (docs/catalog.md, "Combined attention").

#include <attnkit/attention/attention.h>
#include <attnkit/attention/gated_attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/sequential.h>

namespace attnkit {

/// Options for `CombinedAttention`: the gate network, as for GatedAttention (residual_proj
/// must stay false: there is no carried input).
/// Example:
///   CombinedAttention mix(as_attention(LocalAttention(256, 4)),
///                         as_attention(LinearAttention(256, 4)));
using CombinedAttentionOptions = GatedAttentionOptions;

/// What `forward_with_aux_combined` returns.
struct CombinedAttentionOutput : AttentionOutput {
  /// attn_b's weights (attn_weights holds attn_a's); undefined if attn_b returns none.
  torch::Tensor attn_weights_b;
  /// g = sigmoid(gate(x)): [B, T, 1], the weight of attn_a.
  torch::Tensor gate;
};

/// Combined attention. x: [B, T, dim] -> [B, T, dim], dim = attn_a->dim() = attn_b->dim().
/// y = g * attn_a(x) + (1 - g) * attn_b(x), g = sigmoid(gate(x)) [B, T, 1].
/// Parameters: attn_a.*, attn_b.*, gate.0 [1 or h, dim] (+ gate.3 [1, h] with gate_hidden)
/// (attzoo's names).
/// forward(x, attn_mask) passes the mask to both modules. forward_with_aux returns attn_a's
/// weights (as attzoo); forward_with_aux_combined also returns attn_b's and the gate.
/// No decoding: one DecodeState cannot hold the states of two modules.
/// clone() deep-copies both wrapped modules.
class CombinedAttentionImpl : public AttentionImpl {
 public:
  CombinedAttentionImpl(Attention attn_a, Attention attn_b, CombinedAttentionOptions options = {});

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  /// The output, both modules' weights and the gate.
  CombinedAttentionOutput forward_with_aux_combined(const torch::Tensor& x,
                                                    const torch::Tensor& attn_mask = {});
  std::string mechanism() const override { return "CombinedAttention"; }
  int64_t dim() const override { return attn_a->dim(); }

  /// The per-token weight of attn_a, sigmoid(gate(x)): [B, T, 1].
  torch::Tensor gate_values(const torch::Tensor& x);

  CombinedAttentionOptions options;
  Attention attn_a{nullptr}, attn_b{nullptr};
  torch::nn::Sequential gate{nullptr};

 protected:
  /// Built around clones of the wrapped modules.
  std::shared_ptr<AttentionImpl> construct_like() const override;

 private:
  torch::Tensor run(const torch::Tensor& x, const torch::Tensor& attn_mask);
};
ATTNKIT_ATTENTION_MODULE(CombinedAttention);

}  // namespace attnkit
