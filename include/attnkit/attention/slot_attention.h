#pragma once
// Slot attention (Locatello et al., 2020, "Object-Centric Learning with Slot Attention"): a few
// slots compete, through a softmax over the slots, to explain a set of input features, and are
// refined by a GRU and a residual MLP. Set to set: inputs [B, N, D] -> slots [B, S, D].
// attnhut's SlotAttention (docs/catalog.md, "Slot attention").

#include <ATen/core/Generator.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/pimpl.h>

#include <ostream>

namespace attnkit {

/// Options for `SlotAttention`.
/// Example:
///   SlotAttention slots(SlotAttentionOptions(/*dim=*/64, /*num_slots=*/7).num_iters(5));
struct SlotAttentionOptions {
  SlotAttentionOptions(int64_t dim, int64_t num_slots);
  /// Width of the input features and of the slots. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of slots S. Required.
  TORCH_ARG(int64_t, num_slots);
  /// Refinement iterations. Default: 3
  TORCH_ARG(int64_t, num_iters) = 3;
  /// Hidden width of the residual MLP (max(dim, hidden_dim) is used). Default: 128
  TORCH_ARG(int64_t, hidden_dim) = 128;
  /// Added to the slot-softmax weights before they are normalised over the inputs. Default: 1e-8
  TORCH_ARG(double, eps) = 1e-8;
};

/// Slot attention. inputs [B, N, dim] -> slots [B, num_slots, dim].
///   slots = slot_mu + exp(slot_log_sigma) * noise,  noise ~ N(0, 1) [B, S, dim]
///   x = norm_input(inputs), k = to_k(x), v = to_v(x)
///   num_iters times: q = to_q(norm_slots(slots)) / sqrt(dim)
///     attn = softmax over the slots of q k^T [B, S, N], + eps, divided by its sum over inputs
///     slots = gru(attn v, slots);  slots = slots + mlp(norm_pre_mlp(slots))
/// Parameters (attnhut's names): slot_mu, slot_log_sigma [1, 1, dim]; to_q, to_k, to_v
/// (Linear dim -> dim, with bias); gru (GRUCell: weight_ih, weight_hh [3 dim, dim], bias_ih,
/// bias_hh [3 dim]); mlp.0 [max(dim, hidden_dim), dim], mlp.2 [dim, max(dim, hidden_dim)];
/// norm_input, norm_slots, norm_pre_mlp (LayerNorm over dim).
/// The initial noise is drawn with the global RNG, as attnhut does, unless a generator is given
/// (a CPU generator for CPU inputs), which makes the slots reproducible:
///   auto gen = at::detail::createCPUGenerator(0);   // <ATen/CPUGeneratorImpl.h>
///   torch::Tensor s = slots->forward(inputs, gen);
/// The output is invariant to permutations of the N inputs.
class SlotAttentionImpl : public torch::nn::Cloneable<SlotAttentionImpl> {
 public:
  explicit SlotAttentionImpl(SlotAttentionOptions options);
  SlotAttentionImpl(int64_t dim, int64_t num_slots);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// inputs: [B, N, dim] -> [B, num_slots, dim]. The initial noise comes from `generator`
  /// (advanced by B * S * dim normals, drawn on the generator's device and moved to the
  /// inputs': a CPU generator gives the same slots on any device) or, when unset, from the
  /// global RNG of the inputs' device. (One forward with a
  /// default argument: TORCH_MODULE's call operator cannot deduce an overloaded forward.)
  torch::Tensor forward(const torch::Tensor& inputs,
                        std::optional<at::Generator> generator = std::nullopt);

  SlotAttentionOptions options;
  torch::Tensor slot_mu, slot_log_sigma;
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::GRUCell gru{nullptr};
  torch::nn::Sequential mlp{nullptr};
  torch::nn::LayerNorm norm_input{nullptr}, norm_slots{nullptr}, norm_pre_mlp{nullptr};
};
TORCH_MODULE(SlotAttention);

}  // namespace attnkit
