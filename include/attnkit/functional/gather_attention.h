#pragma once
// Gather attention: every query attends to its own list of keys (token-level sparse attention:
// DeepSeek sparse attention, top-k / top-p and sampling maskers), forward and backward.

#include <torch/arg.h>
#include <torch/types.h>

namespace attnkit {
namespace functional {

/// Options of `gather_attention`.
/// Example:
///   GatherAttentionOptions().scale(0.125).sinks(sink_logits)
struct GatherAttentionOptions {
  /// Multiplier of q.k. Unset means 1/sqrt(D). Default: nullopt
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  /// Per-query-head sink logits [Hq] (natural log, not scaled): exp(sink[h]) joins every row's
  /// softmax denominator, as an extra key whose value is zero. Differentiable. Undefined means
  /// none. Default: undefined
  TORCH_ARG(torch::Tensor, sinks);
  /// Each index names a block of this many consecutive keys: index e stands for the keys
  /// [e * block_size, e * block_size + block_size) that exist (block-sparse attention: MiniMax
  /// sparse attention, NSA-style selection). A weight applies to every key of its block.
  /// Default: 1 (token lists)
  TORCH_ARG(int64_t, block_size) = 1;
  /// Drop listed keys that lie after the query (key j > i + Tk - Tq, bottom-right aligned), so
  /// lists of whole blocks need no per-token trimming. Default: false
  TORCH_ARG(bool, causal) = false;
};

/// What `gather_attention` returns.
struct GatherAttentionResult {
  /// [B, Hq, Tq, Dv], the dtype of q.
  torch::Tensor output;
  /// [B, Hq, Tq] float32 natural-log log-sum-exp of the weighted visible logits and the sink;
  /// -inf for a query with no usable key and no sink (its output is zero).
  torch::Tensor lse;
};

/// Softmax attention over per-query key lists, autograd-aware (gradients for q, k, v, weights
/// and sinks). Query head h uses the list of kv head h / (Hq / Hkv).
///   p_j = w_j exp(s_j) / (sum_j' w_j' exp(s_j') + exp(sink_h)), s_j = scale q . k[idx_j],
///   out = sum_j p_j v[idx_j]  (no sink term without options.sinks)
///   q: [B, Hq, Tq, D], k: [B, Hkv, Tk, D], v: [B, Hkv, Tk, Dv],
///   indices: [B, Hkv, Tq, K] integer key positions (-1 = unused slot; block ids with
///            options.block_size > 1), or [B, 1, Tq, K]: one list per query shared by every kv
///            head (read in place, never copied per head). int32 lists (index_topk's
///            index_dtype(torch::kInt)) are read as they are, other integer types as int64
///   weights: the shape of indices, non-negative, optional -> output [B, Hq, Tq, Dv]
/// fp32 and bf16 run the fused kernels (ATTNKIT_BACKEND=reference forces the composition of
/// torch ops); fp64 runs the composition.
/// Example:
///   auto r = functional::gather_attention(q, k, v, topk_indices);
GatherAttentionResult gather_attention(const torch::Tensor& q,
                                       const torch::Tensor& k,
                                       const torch::Tensor& v,
                                       const torch::Tensor& indices,
                                       const torch::Tensor& weights = {},
                                       const GatherAttentionOptions& options = {});

/// The same computation composed of torch ops (gathers [B, Hkv, Tq, K, D] keys): the reference.
GatherAttentionResult gather_attention_reference(const torch::Tensor& q,
                                                 const torch::Tensor& k,
                                                 const torch::Tensor& v,
                                                 const torch::Tensor& indices,
                                                 const torch::Tensor& weights = {},
                                                 const GatherAttentionOptions& options = {});

/// Whether gather_attention and index_topk run on the fused kernels for inputs like `q`
/// (ATTNKIT_BACKEND=fused, CPU, fp32 or bf16). The sparse modules take their O(T K) path only
/// then; otherwise they run the masked dense form, which costs O(T Tk) time and memory.
bool sparse_kernels_available(const torch::Tensor& q);

/// Causal top-k attention over a prefill of a whole sequence (Tq == Tk, query i at position i):
/// each query attends to the keys in its list, indices [B, 1, Tq, K] shared by every head
/// (-1 = unused; index_topk's causal lists). Output [B, Tq, Hq, Dv], time-major for an output
/// projection. The first R = min(Tq, 1.5 K) queries list most of the keys before them, so they
/// run on the flash kernel (dot_product_attention with their lists as a keep mask over keys
/// [0, R)) and the rest on gather_attention. Why 1.5 K: the flash kernel does a FLOP about 2.5x
/// faster than the gather kernel, so it wins while a list covers more than about 2/3 of the
/// i + 1 visible keys, i.e. for i + 1 <= 1.5 K (measured at T = 16K, K = 2048: 1.75 -> 1.65 s).
/// Not differentiable through the lists; q, k, v get gradients.
torch::Tensor causal_topk_attention(const torch::Tensor& q,
                                    const torch::Tensor& k,
                                    const torch::Tensor& v,
                                    const torch::Tensor& indices);

}  // namespace functional
}  // namespace attnkit
