#pragma once
// FlexAttention on the CPU: block-sparse flash attention programmable with an element mask and
// a score modifier, forward and backward, on attnkit's fused kernels (src/kernels/flash).

#include <attnkit/core/reference_attention.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <functional>

namespace attnkit {
namespace functional {

/// Element predicate: true = key kv_idx is visible to query q_idx of (batch b, query head h).
using MaskMod = std::function<bool(int64_t b, int64_t h, int64_t q_idx, int64_t kv_idx)>;
/// Score modifier: returns the new logit of (b, h, q_idx, kv_idx). In the backward its
/// derivative with respect to `score` is taken as 1 (additive modifiers such as relative
/// position biases); use `softcap` for the tanh cap.
using ScoreMod =
    std::function<float(float score, int64_t b, int64_t h, int64_t q_idx, int64_t kv_idx)>;

/// How a block of [block_q x block_k] elements relates to a mask: not visited, partially
/// visible (the element predicate decides), or fully visible.
enum class BlockKind : int8_t { kEmpty = 0, kPartial = 1, kFull = 2 };

/// A mask: the element predicate plus, optionally, an exact block classifier that lets
/// `create_block_mask` skip evaluating every element. Built by the helpers below.
struct Mask {
  /// The element predicate.
  MaskMod fn;
  /// Optional: kind of the block [q0, q1) x [k0, k1) for batch b, head h.
  std::function<BlockKind(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1)>
      classify;
  /// A mask from a bare predicate (blocks are classified by evaluating every element).
  Mask(MaskMod predicate = {}) : fn(std::move(predicate)) {}  // NOLINT: implicit on purpose
};

/// Causal: kv_idx <= q_idx + offset (offset = Tk - Tq aligns the last query with the last key).
Mask causal_mask(int64_t offset = 0);
/// Sliding window: q_idx + offset - left <= kv_idx <= q_idx + offset + right.
Mask sliding_window_mask(int64_t left, int64_t right = 0, int64_t offset = 0);
/// The first `num_sinks` keys plus a causal window of `left` keys (StreamingLLM).
Mask sink_window_mask(int64_t num_sinks, int64_t left, int64_t offset = 0);
/// Packed documents: query and key visible to each other only within one document.
///   document_ids: [T] int64 non-decreasing ids of the packed sequence (Tq == Tk == T).
Mask document_mask(const torch::Tensor& document_ids);
/// Both masks must allow an element.
Mask and_masks(const Mask& a, const Mask& b);
/// Either mask allows an element.
Mask or_masks(const Mask& a, const Mask& b);

/// FlexAttention's block mask: for every (batch, head, query block) the key blocks to visit,
/// split into partial blocks (the element mask is evaluated) and full blocks (it is skipped).
/// Batch and head dims may be 1 (broadcast).
struct BlockMask {
  /// int32 [B|1, H|1, num_q_blocks]: how many partial blocks each query block visits.
  torch::Tensor kv_num_blocks;
  /// int32 [B|1, H|1, num_q_blocks, num_kv_blocks]: their indices (first kv_num_blocks valid).
  torch::Tensor kv_indices;
  /// int32 [B|1, H|1, num_q_blocks]: how many full blocks each query block visits.
  torch::Tensor full_kv_num_blocks;
  /// int32 [B|1, H|1, num_q_blocks, num_kv_blocks]: their indices.
  torch::Tensor full_kv_indices;
  /// Element predicate applied inside partial blocks (none: partial blocks are fully visible).
  MaskMod mask_mod;
  int64_t block_q = 128;
  int64_t block_k = 128;
  int64_t seq_len_q = 0;
  int64_t seq_len_kv = 0;

  /// Block kinds as int8 [B|1, H|1, num_q_blocks, num_kv_blocks] (0 empty, 1 partial, 2 full).
  torch::Tensor to_dense() const;
  /// Fraction of the num_q_blocks x num_kv_blocks blocks that are visited.
  double density() const;
};

/// Builds a block mask by classifying every [block_q x block_k] block of `mask` (with its
/// exact classifier when it has one, else by evaluating every element).
/// B, H: 1 broadcasts over that dim (the mask must then not depend on it).
/// Example:
///   auto bm = create_block_mask(causal_mask(), 1, 1, T, T);
BlockMask create_block_mask(const Mask& mask,
                            int64_t B,
                            int64_t H,
                            int64_t seq_len_q,
                            int64_t seq_len_kv,
                            int64_t block_q = 128,
                            int64_t block_k = 128);

/// Builds a block mask from a dense boolean keep mask (true = attend) by counting the visible
/// elements of every [block_q x block_k] block: none -> skipped, all -> full, else partial. The
/// dense mask itself still decides inside partial blocks, so pass both to `flex_attention`.
///   keep: bool, broadcastable to [B, H, Tq, Tk] (2 to 4 dims; missing or size-1 B, H broadcast)
/// Example:
///   auto r = flex_attention(q, k, v, FlexAttentionOptions().mask(keep).block_mask(
///       block_mask_from_keep(keep)));
BlockMask block_mask_from_keep(const torch::Tensor& keep,
                               int64_t block_q = 128,
                               int64_t block_k = 128);

/// Options of `flex_attention`. Every rule combines (logical and for masks).
/// Example:
///   FlexAttentionOptions().causal(true).softcap(30.0).sinks(sink_logits)
struct FlexAttentionOptions {
  /// Multiplier of q.k. Unset means 1/sqrt(D). Default: nullopt
  TORCH_ARG(c10::optional<double>, scale) = c10::nullopt;
  /// Key j visible to query i only if j <= i + (Tk - Tq) (bottom-right aligned). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Key j visible only if j >= i + (Tk - Tq) - window_left. Default: nullopt
  TORCH_ARG(c10::optional<int64_t>, window_left) = c10::nullopt;
  /// Key j visible only if j <= i + (Tk - Tq) + window_right. Default: nullopt
  TORCH_ARG(c10::optional<int64_t>, window_right) = c10::nullopt;
  /// Per-query-head sink logits [Hq] (gradient supported). Default: undefined
  TORCH_ARG(torch::Tensor, sinks) = {};
  /// s <- softcap * tanh(s / softcap) on the scaled logits; 0 means off. Default: 0
  TORCH_ARG(double, softcap) = 0.0;
  /// ALiBi slopes [Hq]: s <- s + slope[h] * (j - (i + Tk - Tq)), after the softcap (no
  /// gradient). Default: undefined
  TORCH_ARG(torch::Tensor, alibi_slopes) = {};
  /// Additive bias broadcastable to [B, Hq, Tq, Tk], after ALiBi (gradient supported).
  /// Default: undefined
  TORCH_ARG(torch::Tensor, bias) = {};
  /// Boolean keep mask broadcastable to [B, Hq, Tq, Tk] (true = attend). Default: undefined
  TORCH_ARG(torch::Tensor, mask) = {};
  /// Block-sparse structure; its mask_mod is applied inside partial blocks. Default: nullopt
  TORCH_ARG(c10::optional<BlockMask>, block_mask) = c10::nullopt;
  /// Element mask evaluated on every visited element (only without block_mask). Default: none
  TORCH_ARG(MaskMod, mask_mod) = {};
  /// Score modifier, after the bias and before the masks. Default: none
  TORCH_ARG(ScoreMod, score_mod) = {};
};

/// What `flex_attention` returns.
struct FlexAttentionResult {
  /// [B, Hq, Tq, Dv], the dtype of q.
  torch::Tensor output;
  /// [B, Hq, Tq] float32 (float64 for double inputs), natural log; -inf for a fully masked
  /// row without a sink (whose output is zero).
  torch::Tensor lse;
};

/// Softmax attention with FlexAttention's programming model on attnkit's fused CPU kernels,
/// autograd-aware (gradients for q, k, v, sinks and bias). GQA without copying K/V: query head
/// h reads kv head h / (Hq / Hkv). fp32 and bf16 run fused (fp32 accumulation); fp64 runs the
/// composed reference; ATTNKIT_BACKEND=reference forces it.
///   q: [B, Hq, Tq, D], k: [B, Hkv, Tk, D], v: [B, Hkv, Tk, Dv] -> output [B, Hq, Tq, Dv]
/// Example:
///   auto r = functional::flex_attention(q, k, v, FlexAttentionOptions().causal(true));
FlexAttentionResult flex_attention(const torch::Tensor& q,
                                   const torch::Tensor& k,
                                   const torch::Tensor& v,
                                   const FlexAttentionOptions& options = {});

/// The same semantics composed of plain torch ops (materialises [Tq, Tk] logits): what
/// ATTNKIT_BACKEND=reference runs, and an oracle for the tests.
///   q: [B, Hq, Tq, D], k: [B, Hkv, Tk, D], v: [B, Hkv, Tk, Dv] -> output [B, Hq, Tq, Dv]
FlexAttentionResult flex_attention_reference(const torch::Tensor& q,
                                             const torch::Tensor& k,
                                             const torch::Tensor& v,
                                             const FlexAttentionOptions& options = {});

/// True when ATTNKIT_BACKEND selects the fused kernels (unset or "fused"), false for
/// "reference"; any other value is an error.
bool fused_backend_selected();

}  // namespace functional
}  // namespace attnkit
