#pragma once
// Causal-JEPA object-level masked attention (Nam et al., 2026): a predictor over a time x object
// grid of slots that hides some objects across the history and the whole future, and rebuilds
// them with bidirectional attention. Set to set: slots [B, Th, S, D] -> [B, Th + Tp, S, D].
// attnhut's CausalJEPAAttention and cjepa_masked_loss (docs/catalog.md, "Causal-JEPA attention").

#include <attnkit/attention/standard_attention.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <ostream>

namespace attnkit {

/// Options for `CausalJEPAAttention`.
/// Example:
///   CausalJEPAAttention predictor(CausalJEPAAttentionOptions(/*dim=*/64, /*num_heads=*/4,
///       /*num_slots=*/6, /*history_frames=*/3).pred_frames(2).depth(4));
struct CausalJEPAAttentionOptions {
  CausalJEPAAttentionOptions(int64_t dim,
                             int64_t num_heads,
                             int64_t num_slots,
                             int64_t history_frames);
  /// Slot width; must be divisible by num_heads. Required.
  TORCH_ARG(int64_t, dim);
  /// Attention heads of every block. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Objects (slots) per frame S. Required.
  TORCH_ARG(int64_t, num_slots);
  /// Observed frames Th; frame 0 is always visible and anchors each object's identity. Required.
  TORCH_ARG(int64_t, history_frames);
  /// Future frames Tp to predict. Default: 1
  TORCH_ARG(int64_t, pred_frames) = 1;
  /// Objects hidden across history frames 1 .. Th-1 when forward draws them. Default: 2
  TORCH_ARG(int64_t, num_masked_slots) = 2;
  /// Transformer blocks. Default: 6
  TORCH_ARG(int64_t, depth) = 6;
  /// Hidden width of each block's MLP; 0 means 4 * dim. Default: 0
  TORCH_ARG(int64_t, mlp_dim) = 0;
  /// Dropout on attention weights and in the MLPs, in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Bias on every linear layer (id_proj, attention, MLP, to_out). Default: true
  TORCH_ARG(bool, bias) = true;
};

/// One bidirectional block: x = x + attn(x) (no norm before attention, as attnhut), then
/// x = x + mlp(x) with mlp = LayerNorm, Linear(dim, mlp_dim), GELU, Dropout, Linear(mlp_dim, dim),
/// Dropout. x: [B, N, dim] -> [B, N, dim].
class CausalJEPABlockImpl : public torch::nn::Cloneable<CausalJEPABlockImpl> {
 public:
  CausalJEPABlockImpl(int64_t dim, int64_t num_heads, int64_t mlp_dim, double dropout, bool bias);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);

  StandardAttention attn{nullptr};
  torch::nn::Sequential mlp{nullptr};

 private:
  int64_t dim_ = 0, num_heads_ = 0, mlp_dim_ = 0;
  double dropout_ = 0.0;
  bool bias_ = true;
};
TORCH_MODULE(CausalJEPABlock);

/// What `CausalJEPAAttention::forward` returns.
struct CausalJEPAOutput {
  /// Predicted slots for every frame: [B, Th + Tp, S, dim].
  torch::Tensor pred;
  /// The object indices hidden across history frames 1 .. Th-1: int64 [num_masked].
  torch::Tensor mask_slots;
};

/// The C-JEPA predictor. The input grid [B, Th + Tp, S, dim] holds, at each (frame t, object s):
///   frame 0 and visible history objects:  slots[:, t, s] + time_pos[t]
///   hidden history objects and the future: mask_token + time_pos[t] + id_proj(slots[:, 0, s])
/// It is flattened to [B, (Th + Tp) * S, dim], run through `depth` bidirectional blocks,
/// normalised (norm) and projected (to_out). Nothing encodes object order, so the predictor is
/// equivariant to permutations of the objects.
/// Parameters: mask_token [1, 1, 1, dim], time_pos [1, Th + Tp, 1, dim] (both truncated normal,
/// std 0.02), id_proj, blocks.i.attn.{q_proj, k_proj, v_proj, o_proj} (StandardAttention,
/// non-causal, with bias), blocks.i.mlp.{0 (LayerNorm), 1, 4 (Linear)}, norm (LayerNorm), to_out.
/// Deviation from attnhut: its blocks' attention has a fused blocks.i.attn.qkv [3 dim, dim] and
/// blocks.i.attn.proj; here they are the library's StandardAttention names q_proj, k_proj,
/// v_proj (the three row blocks of qkv, in that order) and o_proj (= proj).
class CausalJEPAAttentionImpl : public torch::nn::Cloneable<CausalJEPAAttentionImpl> {
 public:
  explicit CausalJEPAAttentionImpl(CausalJEPAAttentionOptions options);
  CausalJEPAAttentionImpl(int64_t dim,
                          int64_t num_heads,
                          int64_t num_slots,
                          int64_t history_frames);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// slots: [B, Th, S, dim]; mask_slots: integer [num_masked] object indices to hide over history
  /// frames 1 .. Th-1, or undefined to draw num_masked_slots of them with the global RNG
  /// (randperm(num_slots), shared across the batch).
  CausalJEPAOutput forward(const torch::Tensor& slots, const torch::Tensor& mask_slots = {});
  /// Rolls out the future from a fully visible history: slots [B, Th, S, dim] ->
  /// [B, Tp, S, dim] (the future frames only).
  torch::Tensor predict(const torch::Tensor& slots);

  CausalJEPAAttentionOptions options;
  torch::Tensor mask_token, time_pos;
  torch::nn::Linear id_proj{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear to_out{nullptr};

 private:
  /// visible: bool [Th, S], true where the real slot enters the grid.
  torch::Tensor run(const torch::Tensor& slots, const torch::Tensor& visible);
  void check_slots(const torch::Tensor& slots) const;
};
TORCH_MODULE(CausalJEPAAttention);

/// The C-JEPA masked latent loss: the mean over scored positions of mean_dim (pred - target)^2,
/// where the scored positions are every object of the future frames (t >= history_frames) and
/// the hidden objects (mask_slots) of history frames 1 .. history_frames-1; frame 0 is never
/// scored. pred, target: [B, Th + Tp, S, dim]; mask_slots: integer [num_masked].
/// Example:
///   auto out = predictor(slots);
///   torch::Tensor loss = cjepa_masked_loss(out.pred, target, out.mask_slots,
///   /*history_frames=*/3);
torch::Tensor cjepa_masked_loss(const torch::Tensor& pred,
                                const torch::Tensor& target,
                                const torch::Tensor& mask_slots,
                                int64_t history_frames);

}  // namespace attnkit
