#pragma once
// Gated DeltaNet (Yang, Kautz & Hatamizadeh, 2025, "Gated Delta Networks: Improving Mamba2 with
// Delta Rule"), the linear-attention layer of Qwen3-Next / Qwen3.5, as d9d's GatedDeltaNet
// (docs/gated_delta_net.md): a qkv projection, a causal depthwise short convolution, a decay
// gate, a beta gate and the gated delta rule, with a gated RMSNorm on the output.
//
// The gated delta rule itself is in <attnkit/functional/gated_delta_rule.h>.

#include <attnkit/attention/attention.h>
#include <attnkit/core/rms_norm.h>
#include <attnkit/functional/gated_delta_rule.h>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

#include <ostream>
#include <variant>

namespace attnkit {

// --- decay gates
// ----------------------------------------------------------------------------------

/// The Mamba decay gate: g = -exp(A_log) * softplus(proj(x) + dt_bias), with
/// A = exp(A_log) drawn from U(0, normalizer] and dt = softplus(dt_bias) log-uniform in
/// [dt_min, dt_max], floored at dt_init_floor (d9d's MambaDecayGateParameters).
/// Example:
///   GatedDeltaNetOptions(512, 4, 8).decay_gate(MambaDecayGateOptions().dt_max(0.05))
struct MambaDecayGateOptions {
  /// Upper end of the initial A = exp(A_log) ~ U(0, normalizer]. Default: 16
  TORCH_ARG(double, normalizer) = 16.0;
  /// Lower end of the initial log-uniform dt. Default: 0.001
  TORCH_ARG(double, dt_min) = 1e-3;
  /// Upper end of the initial log-uniform dt. Default: 0.1
  TORCH_ARG(double, dt_max) = 0.1;
  /// Smallest initial dt (applied after sampling). Default: 0.0001
  TORCH_ARG(double, dt_init_floor) = 1e-4;
};

/// The log-sigmoid decay gate (GLA): g = logsigmoid(proj(x)) / normalizer (d9d's
/// LogSigmoidDecayGateParameters).
struct LogSigmoidDecayGateOptions {
  /// Divides the log-sigmoid; larger means slower decay. Default: 16
  TORCH_ARG(double, normalizer) = 16.0;
};

/// Which decay gate, with its parameters.
using DecayGateOptions = std::variant<MambaDecayGateOptions, LogSigmoidDecayGateOptions>;

/// The decay gate of GatedDeltaNet: x [B, T, dim] -> log decay g [B, T, num_heads] (<= 0).
/// Parameters: proj.weight [num_heads, dim]; Mamba only: A_log [num_heads], dt_bias [num_heads].
class GatedDeltaDecayGateImpl : public torch::nn::Cloneable<GatedDeltaDecayGateImpl> {
 public:
  GatedDeltaDecayGateImpl(int64_t dim, int64_t num_heads, DecayGateOptions options);

  void reset() override;
  /// Default Linear init for proj; A_log and dt_bias as described in MambaDecayGateOptions.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);

  int64_t dim;
  int64_t num_heads;
  DecayGateOptions options;
  torch::nn::Linear proj{nullptr};
  torch::Tensor A_log, dt_bias;  // NOLINT(readability-identifier-naming): checkpoint names
};
TORCH_MODULE(GatedDeltaDecayGate);

/// The causal depthwise short convolution with SiLU of GatedDeltaNet:
///   y[t, c] = silu(sum_{i<W} weight[c, i] * u[t - W + 1 + i, c]), u before t = prefix or 0.
/// Parameter: weight [channels, W] (no bias); kaiming-uniform(a = sqrt 5) init, as Conv1d.
class GatedDeltaShortConvImpl : public torch::nn::Cloneable<GatedDeltaShortConvImpl> {
 public:
  GatedDeltaShortConvImpl(int64_t channels, int64_t kernel_size);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  /// u: [B, T, C]; prefix: [B, W - 1, C], the inputs before u (undefined = zeros) -> [B, T, C]
  torch::Tensor forward(const torch::Tensor& u, const torch::Tensor& prefix = {});

  int64_t channels;
  int64_t kernel_size;
  torch::Tensor weight;
};
TORCH_MODULE(GatedDeltaShortConv);

// --- the module
// -----------------------------------------------------------------------------------

/// Options for `GatedDeltaNet`.
/// Example (Qwen3.5-like proportions):
///   GatedDeltaNet gdn(GatedDeltaNetOptions(/*dim=*/512, /*num_qk_heads=*/4, /*num_v_heads=*/8)
///                         .head_qk_dim(64).head_v_dim(64).norm_eps(1e-6));
struct GatedDeltaNetOptions {
  GatedDeltaNetOptions(int64_t dim, int64_t num_qk_heads, int64_t num_v_heads);
  /// Model width of the input and output (d9d hidden_size). Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query/key heads Hqk (d9d num_query_key_heads). Required.
  TORCH_ARG(int64_t, num_qk_heads);
  /// Number of value heads Hv, a multiple of num_qk_heads; qk head i feeds value heads
  /// i * Hv/Hqk ... (i + 1) * Hv/Hqk - 1 (d9d num_value_heads). Required.
  TORCH_ARG(int64_t, num_v_heads);
  /// Width dk of a query/key head; 0 means dim / num_v_heads. Default: 0
  TORCH_ARG(int64_t, head_qk_dim) = 0;
  /// Width dv of a value head; 0 means dim / num_v_heads. Default: 0
  TORCH_ARG(int64_t, head_v_dim) = 0;
  /// Epsilon of the per-head output RMSNorm (must be > 0). Default: 1e-6
  TORCH_ARG(double, norm_eps) = 1e-6;
  /// Width W of the causal depthwise convolution over the qkv projection. Default: 4
  TORCH_ARG(int64_t, conv_size) = 4;
  /// The decay gate and its parameters. Default: MambaDecayGateOptions()
  TORCH_ARG(DecayGateOptions, decay_gate) = MambaDecayGateOptions();
  /// L2-normalise q and k per head (x / sqrt(sum x^2 + 1e-6)) before the rule. Default: true
  TORCH_ARG(bool, use_qk_l2norm) = true;
};

/// Gated DeltaNet, always causal. x: [B, T, dim] -> [B, T, dim]. With Dqk = Hqk dk and
/// Dv = Hv dv (docs/catalog.md, "Gated DeltaNet"):
///   h = x (* mask);  [q | k | v] = silu(causal_conv(qkv_proj(h)))   (q, k: Hqk heads, v: Hv)
///   q, k <- l2norm(q), l2norm(k) (option);  g = decay_gate(h);  beta = sigmoid(b_proj(h))
///   o = gated_delta_rule(q, k, v, g, beta) with q scaled by dk^-1/2
///   y = o_proj(silu(g_proj(h)) * out_norm(o))   (out_norm: RMSNorm over dv, per head)
/// Parameters, named as d9d names them for the Qwen3.5 checkpoints:
///   qkv_proj.weight [2 Dqk + Dv, dim]   g_proj.weight [Dv, dim]   b_proj.weight [Hv, dim]
///   decay_gate.proj.weight [Hv, dim]    decay_gate.A_log [Hv], decay_gate.dt_bias [Hv] (Mamba)
///   qkv_conv1d.weight [2 Dqk + Dv, W]   out_norm.weight [dv]      o_proj.weight [dim, Dv]
/// Hugging Face Qwen3.5 / Qwen3-Next names map as: in_proj_qkv -> qkv_proj, in_proj_z -> g_proj,
/// in_proj_b -> b_proj, in_proj_a -> decay_gate.proj, A_log -> decay_gate.A_log,
/// dt_bias -> decay_gate.dt_bias, conv1d.weight [C, 1, W] (squeeze dim 1) -> qkv_conv1d.weight,
/// norm.weight -> out_norm.weight, out_proj -> o_proj.
///
/// forward(x, attn_mask) takes a key-padding mask [B, T] (bool, true = real token), unlike the
/// [T, T]-style masks of AttentionImpl: as in d9d and Hugging Face, the input is multiplied by
/// the mask before everything else, so padded positions output exactly 0, and left-padded
/// sequences give the same outputs at real positions as unpadded ones (right padding cannot
/// affect earlier positions: the layer is causal).
///
/// Decoding keeps the last W - 1 rows of the qkv projection (conv_state [B, W - 1, C]) and the
/// recurrent state (recurrent_state [B, Hv, dk, dv]): constant memory and O(1) work per token.
/// A prefill chunk runs the chunked form from the carried state. Both are stored detached.
class GatedDeltaNetImpl : public AttentionCloneable<GatedDeltaNetImpl> {
 public:
  explicit GatedDeltaNetImpl(GatedDeltaNetOptions options);
  GatedDeltaNetImpl(int64_t dim, int64_t num_qk_heads, int64_t num_v_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  /// attn_mask: [B, T] bool key-padding mask (true = real token), or undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  /// attn_weights: the delta rule's effective causal mixing matrix A [B, Hv, T, T], with
  /// o_t = sum_s A[t, s] v_s before the output norm and gate (the rule is linear in the values,
  /// so A is the rule applied to identity values). Signed; rows do not sum to 1. O(T^2): for
  /// inspection and pictures, not for long sequences.
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return true; }
  std::string mechanism() const override { return "GatedDeltaNet"; }
  int64_t dim() const override { return options.dim(); }

  /// dk and dv with the 0 defaults resolved.
  int64_t head_qk_dim() const;
  int64_t head_v_dim() const;

  GatedDeltaNetOptions options;
  torch::nn::Linear qkv_proj{nullptr}, g_proj{nullptr}, b_proj{nullptr}, o_proj{nullptr};
  GatedDeltaDecayGate decay_gate{nullptr};
  GatedDeltaShortConv qkv_conv1d{nullptr};
  RMSNorm out_norm{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights = false);
};
ATTNKIT_ATTENTION_MODULE(GatedDeltaNet);

}  // namespace attnkit
