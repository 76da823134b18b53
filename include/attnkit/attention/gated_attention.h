#pragma once
// A highway gate around any attention module: y = g * Attn(x) + (1 - g) * x, with a per-token
// learned gate g = sigmoid(G(x)). attzoo's GatedSelfAttention (docs/catalog.md, "Gated attention").

#include <attnkit/attention/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `GatedAttention` (and the gate of `CombinedAttention`).
/// Example:
///   GatedAttention gated(as_attention(LocalAttention(256, 4)),
///                        GatedAttentionOptions().gate_hidden(64));
struct GatedAttentionOptions {
  /// Hidden width of the gate MLP Linear(dim, h) -> GELU -> Dropout -> Linear(h, 1); 0 means a
  /// single Linear(dim, 1). Default: 0
  TORCH_ARG(int64_t, gate_hidden) = 0;
  /// Bias on the gate's linear layers. Default: true
  TORCH_ARG(bool, gate_bias) = true;
  /// Dropout inside the gate MLP (gate_hidden > 0 only) in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Carry x through a learned Linear(dim, dim) `x_proj` (with bias) instead of unchanged.
  /// Default: false
  TORCH_ARG(bool, residual_proj) = false;
};

/// What `forward_with_aux_gated` returns: the output, the inner module's weights and the gate.
struct GatedAttentionOutput : AttentionOutput {
  /// g = sigmoid(G(x)): [B, T, 1]
  torch::Tensor gate;
};

/// Gated attention. x: [B, T, dim] -> [B, T, dim], dim = attn->dim().
/// y = g * attn(x) + (1 - g) * carry(x), g = sigmoid(gate(x)) [B, T, 1], carry = x (or
/// x_proj(x) with residual_proj). Any sequence-to-sequence mechanism can be wrapped.
/// Parameters: attn.* (the wrapped module), gate.0 [1 or h, dim] (+ gate.3 [1, h] with
/// gate_hidden), x_proj [dim, dim] with residual_proj (attzoo's names; attzoo's x_proj exists
/// only when its input_dim differs from d_model, which cannot happen here since every attnkit
/// mechanism maps dim to dim).
/// forward(x, attn_mask) passes the mask to attn. Decoding works when attn supports it: the
/// state is attn's (init_state delegates), and the gate is per token.
/// clone() deep-copies the wrapped module.
class GatedAttentionImpl : public AttentionImpl {
 public:
  explicit GatedAttentionImpl(Attention attn, GatedAttentionOptions options = {});

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return attn->supports_decoding(); }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  /// The output, attn's weights and the gate.
  GatedAttentionOutput forward_with_aux_gated(const torch::Tensor& x,
                                              const torch::Tensor& attn_mask = {});
  std::string mechanism() const override { return "GatedAttention"; }
  int64_t dim() const override { return attn->dim(); }

  /// The per-token gate sigmoid(gate(x)): [B, T, 1].
  torch::Tensor gate_values(const torch::Tensor& x);

  GatedAttentionOptions options;
  Attention attn{nullptr};
  torch::nn::Sequential gate{nullptr};
  torch::nn::Linear x_proj{nullptr};

 protected:
  /// Built around clones of the wrapped modules.
  std::shared_ptr<AttentionImpl> construct_like() const override;

 private:
  torch::Tensor combine(const torch::Tensor& x, const torch::Tensor& attended);
};
ATTNKIT_ATTENTION_MODULE(GatedAttention);

namespace detail {
/// The gate network of GatedAttention / CombinedAttention: Linear(dim, 1) or
/// Linear(dim, h) -> GELU -> Dropout -> Linear(h, 1) (no sigmoid).
torch::nn::Sequential make_gate(int64_t dim, const GatedAttentionOptions& options);
}  // namespace detail

}  // namespace attnkit
