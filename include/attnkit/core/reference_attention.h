#pragma once
// The reference (math) attention: plain torch ops, materialises the [Tq, Tk] scores. It is the
// oracle every fused kernel is tested against, so it stays as simple as the semantics allow.

#include <torch/arg.h>
#include <torch/types.h>

namespace attnkit {

/// Options shared by every dot-product attention path (reference and fused).
/// Example:
///   DotProductAttentionOptions().causal(true).window_left(128).sinks(sink_logits)
struct DotProductAttentionOptions {
  /// Multiplier of q.k. Unset means 1/sqrt(D). Default: nullopt
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  /// Key j is visible to query i only if j <= i + (Tk - Tq) (bottom-right aligned). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Sliding window: key j is visible only if j >= pos(i) - window_left, where
  /// pos(i) = i + (Tk - Tq). Unset means unbounded. Default: nullopt
  TORCH_ARG(std::optional<int64_t>, window_left) = std::nullopt;
  /// Sliding window: key j is visible only if j <= pos(i) + window_right. Default: nullopt
  TORCH_ARG(std::optional<int64_t>, window_right) = std::nullopt;
  /// Per-query-head sink logits [Hq]: an extra, unscaled logit in each softmax denominator whose
  /// value column is zero (gpt-oss, StreamingLLM). Undefined means none. Default: undefined
  TORCH_ARG(torch::Tensor, sinks) = {};
  /// Boolean keep mask (true = attend), broadcastable to [B, Hq, Tq, Tk]. Default: undefined
  TORCH_ARG(torch::Tensor, mask) = {};
  /// Additive bias on the scaled logits, broadcastable to [B, Hq, Tq, Tk]. Default: undefined
  TORCH_ARG(torch::Tensor, bias) = {};
  /// Dropout probability on the attention weights; the caller passes 0 in eval mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Also return the attention weights [B, Hq, Tq, Tk]. Default: false
  TORCH_ARG(bool, need_weights) = false;
};

/// What an attention call returns.
struct AttentionResult {
  /// [B, Hq, Tq, Dv]
  torch::Tensor output;
  /// Natural-log log-sum-exp of the visible scaled logits (and the sink), float32 (float64 for
  /// double inputs): [B, Hq, Tq]. -inf for a fully masked row without a sink.
  torch::Tensor lse;
  /// [B, Hq, Tq, Tk] when need_weights, else undefined. Rows of a fully masked query are zero.
  torch::Tensor weights;
};

/// Checks shapes, dtypes and devices of an attention call; `fn` names the caller in messages.
///   q: [B, Hq, Tq, D], k: [B, Hkv, Tk, D], v: [B, Hkv, Tk, Dv], Hq % Hkv == 0.
void check_attention_inputs(const char* fn,
                            const torch::Tensor& q,
                            const torch::Tensor& k,
                            const torch::Tensor& v,
                            const DotProductAttentionOptions& options);

/// The boolean visibility of causal / window rules alone: [Tq, Tk], true = visible. Undefined
/// when no rule applies.
torch::Tensor positional_keep_mask(int64_t seq_len_q,
                                   int64_t seq_len_kv,
                                   const DotProductAttentionOptions& options,
                                   torch::Device device);

/// Softmax attention by composition of torch ops, autograd-aware. GQA by grouping: query head h
/// reads kv head h / (Hq / Hkv). A fully masked query row gives zeros, never NaN.
///   q: [B, Hq, Tq, D], k: [B, Hkv, Tk, D], v: [B, Hkv, Tk, Dv] -> output [B, Hq, Tq, Dv]
AttentionResult reference_attention(const torch::Tensor& q,
                                    const torch::Tensor& k,
                                    const torch::Tensor& v,
                                    const DotProductAttentionOptions& options = {});

}  // namespace attnkit
