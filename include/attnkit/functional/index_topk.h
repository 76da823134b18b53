#pragma once
// Fused indexer scoring + top-k selection: what DeepSeek's lightning indexer and MiniMax's block
// indexer compute before their sparse attention, without materialising the [Tq, Tk] scores.

#include <torch/arg.h>
#include <torch/types.h>

namespace attnkit {
namespace functional {

/// Options of `index_topk`.
/// Example:
///   IndexTopkOptions().top_k(2048).causal(true)
struct IndexTopkOptions {
  /// How many units (keys, or blocks of keys) each query keeps. Default: 64
  TORCH_ARG(int64_t, top_k) = 64;
  /// Key j scored for query i only if j <= i + (Tk - Tq) (bottom-right aligned). Default: false
  TORCH_ARG(bool, causal) = false;
  /// ReLU on every head's logit before the weighted head sum (DeepSeek). Default: true
  TORCH_ARG(bool, relu) = true;
  /// Multiplier of q . k, before the ReLU. Default: 1
  TORCH_ARG(double, scale) = 1.0;
  /// Keys per selected unit: 1 selects keys; n > 1 selects blocks [n u, n u + n) of keys, each
  /// scored by the maximum of its visible keys' scores (MiniMax). Default: 1
  TORCH_ARG(int64_t, block_size) = 1;
  /// Boolean keep mask [Tq, Tk] or [B or 1, Tq, Tk] (true = may be scored). Default: undefined
  TORCH_ARG(torch::Tensor, mask) = {};
  /// int64 [Tq]: query i scores keys j < key_limit[i] only, a visible prefix per query in O(Tq)
  /// memory (e.g. compressed entries complete before the query). Combines with causal and
  /// mask. Default: undefined
  TORCH_ARG(torch::Tensor, key_limit) = {};
  /// The output's dtype: torch::kLong, or torch::kInt for half the memory (gather_attention
  /// reads either). Default: torch::kLong
  TORCH_ARG(torch::Dtype, index_dtype) = torch::kLong;
};

/// For every query row, the top_k units by index score, as unit positions in ascending order
/// with -1 in the slots left when fewer units are visible. Equal scores keep the earlier unit
/// (what a stable descending sort keeps), so a decoding step selects what the full forward
/// selects. Not differentiable (the selection is discrete).
///   score(i, j) = sum_h w[i, h] act(scale q[i, h] . k[j]),  act = ReLU or identity
///   q: [B, G, Tq, Hi, Di] (G independent query groups, Hi heads summed), k: [B, Tk, Di] shared,
///   w: [B, G, Tq, Hi] or undefined (all ones) -> int64 (or index_dtype) [B, G, Tq, top_k]
/// Runs a fused kernel (fp32 compute, scores kept in cache, a heap per row) for fp32 and bf16 on
/// the CPU; other inputs and ATTNKIT_BACKEND=reference run `index_topk_reference`.
/// Example (DeepSeek's lightning indexer, one group):
///   auto idx = functional::index_topk(q.unsqueeze(1), k, w.unsqueeze(1),
///                                     IndexTopkOptions().top_k(64).causal(true));
torch::Tensor index_topk(const torch::Tensor& q,
                         const torch::Tensor& k,
                         const torch::Tensor& w = {},
                         const IndexTopkOptions& options = {});

/// The same selection composed of torch ops (materialises [B, G, Tq, Tk] scores and sorts them):
/// the reference and the oracle of the tests.
torch::Tensor index_topk_reference(const torch::Tensor& q,
                                   const torch::Tensor& k,
                                   const torch::Tensor& w = {},
                                   const IndexTopkOptions& options = {});

}  // namespace functional
}  // namespace attnkit
