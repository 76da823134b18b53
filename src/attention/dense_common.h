#pragma once
// Shared pieces of the dense (q/k/v/o projection) mechanisms: input checks, per-call masks and
// the grouped-query pipeline that StandardAttention, MultiQueryAttention and
// GroupedQueryAttention all run. Private to the library.

#include <attnkit/attention/attention.h>
#include <attnkit/core/reference_attention.h>
#include <attnkit/core/rms_norm.h>
#include <attnkit/core/rope.h>

#include <torch/nn/modules/linear.h>

#include <initializer_list>

namespace attnkit {
namespace detail {

/// Resets the parameters of every listed layer.
void reset_linears(std::initializer_list<torch::nn::Linear> layers);

/// Raises unless x is a floating [B, T, dim] tensor of the parameters' dtype.
void check_sequence_input(const std::string& mechanism,
                          const torch::Tensor& x,
                          int64_t dim,
                          const torch::Tensor& parameter);

/// Turns a per-call attn_mask ([T, T], [B, T, T] or [B, 1|H, T, T]; bool keep or additive float)
/// into the mask or bias of `options`.
void add_attn_mask(const std::string& mechanism,
                   const torch::Tensor& attn_mask,
                   int64_t batch_size,
                   int64_t num_heads,
                   int64_t seq_len,
                   DotProductAttentionOptions& options);

/// Everything the grouped pipeline needs to know besides the layers.
struct GroupedSpec {
  std::string mechanism;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool causal = false;
  double dropout = 0.0;
  std::optional<int64_t> window_left;
  std::optional<int64_t> window_right;
  /// Softmax temperature: the scale is 1 / (sqrt(head_dim) * temperature).
  double temperature = 1.0;
};

/// The layers of one grouped module; optional ones are null / undefined.
struct GroupedLayers {
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::nn::Linear gate_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};
  const RotaryEmbedding* rope = nullptr;
  torch::Tensor sinks;
};

/// x [B, T, dim] -> q [B, H, T, hd], k/v [B, Hkv, T, hd] (+ norm, rope at the state's offset,
/// cache append) -> attention -> (gate) -> o_proj. With a state, the keys are the cached prefix
/// plus this chunk and the causal rule is bottom-right aligned.
AttentionOutput grouped_attention(const GroupedSpec& spec,
                                  GroupedLayers layers,
                                  const torch::Tensor& x,
                                  const torch::Tensor& attn_mask,
                                  DecodeState* state,
                                  bool training,
                                  bool need_weights);

/// Prints a bool as true/false.
inline const char* str(bool b) { return b ? "true" : "false"; }

}  // namespace detail
}  // namespace attnkit
