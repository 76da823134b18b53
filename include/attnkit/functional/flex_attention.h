#pragma once
// FlexAttention on the CPU: block-sparse flash attention programmable with an element mask and
// a score modifier, forward and backward, on attnkit's fused kernels (src/kernels/flash).

#include <attnkit/core/reference_attention.h>
#include <attnkit/functional/backend.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>

namespace attnkit {
namespace functional {

/// Element predicate: true = key kv_idx is visible to query q_idx of (batch b, query head h).
using MaskMod = std::function<bool(int64_t b, int64_t h, int64_t q_idx, int64_t kv_idx)>;
/// Score modifier: returns the new logit of (b, h, q_idx, kv_idx). In the backward its
/// derivative with respect to `score` is taken as 1 (additive modifiers such as relative
/// position biases); use `softcap` for the tanh cap.
using ScoreMod =
    std::function<float(float score, int64_t b, int64_t h, int64_t q_idx, int64_t kv_idx)>;

/// The hook the fused kernels call once per row segment of a tile: for query q_idx of (b, h)
/// and the keys k0 .. k0 + n - 1 it rewrites scores[0:n] in place (a mask writes -inf over the
/// hidden keys, a score modifier replaces every logit). `functor` points at the user's callable.
using RowHook = void (*)(
    const void* functor, int64_t b, int64_t h, int64_t q_idx, int64_t k0, int64_t n, float* scores);

namespace detail {

// The segment loops, instantiated for the callable's own type in the caller's translation unit
// so its body is inlined into the loop (the kernel pays one indirect call per segment).
template <class F>
void mask_row(
    const void* functor, int64_t b, int64_t h, int64_t q_idx, int64_t k0, int64_t n, float* s) {
  const F& f = *static_cast<const F*>(functor);
  for (int64_t c = 0; c < n; ++c) {
    if (!f(b, h, q_idx, k0 + c)) s[c] = -std::numeric_limits<float>::infinity();
  }
}

template <class F>
void score_row(
    const void* functor, int64_t b, int64_t h, int64_t q_idx, int64_t k0, int64_t n, float* s) {
  const F& f = *static_cast<const F*>(functor);
  for (int64_t c = 0; c < n; ++c) s[c] = f(s[c], b, h, q_idx, k0 + c);
}

// An empty std::function (the default of the options) builds an empty functor.
template <class Sig>
bool is_empty_callable(const std::function<Sig>& f) {
  return !f;
}
template <class F>
bool is_empty_callable(const F&) {
  return false;
}

template <class F, class Self>
using if_callable_as = std::enable_if_t<
    std::conjunction_v<std::negation<std::is_same<std::decay_t<F>, Self>>,
                       std::is_invocable_r<bool, const F&, int64_t, int64_t, int64_t, int64_t>>,
    int>;
template <class F, class Self>
using if_score_callable_as = std::enable_if_t<
    std::conjunction_v<
        std::negation<std::is_same<std::decay_t<F>, Self>>,
        std::is_invocable_r<float, const F&, float, int64_t, int64_t, int64_t, int64_t>>,
    int>;

}  // namespace detail

/// How a block of [block_q x block_k] elements relates to a mask: not visited, partially
/// visible (the element predicate decides), or fully visible.
enum class BlockKind : int8_t { kEmpty = 0, kPartial = 1, kFull = 2 };

/// A mask: an element predicate compiled into a kernel row hook, plus, optionally, an exact
/// block classifier that lets `create_block_mask` skip evaluating every element. Built from any
/// callable `bool(int64_t b, int64_t h, int64_t q_idx, int64_t kv_idx)` (implicitly, or with
/// `mask_fn`): a lambda's body is inlined into the kernel's segment loop; a `MaskMod`
/// (std::function) goes through the same template and costs one type-erased call per element.
struct Mask {
  /// The element predicate (block classification and the composed reference).
  MaskMod fn;
  /// Optional: kind of the block [q0, q1) x [k0, k1) for batch b, head h.
  std::function<BlockKind(int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t k0, int64_t k1)>
      classify;
  /// Writes -inf over the hidden keys of a row segment (see RowHook), called with `functor`.
  RowHook row = nullptr;
  std::shared_ptr<const void> functor;

  /// The empty mask (everything visible).
  Mask() = default;
  /// A mask from a predicate; blocks are classified by evaluating every element.
  template <class F, detail::if_callable_as<F, Mask> = 0>
  Mask(F predicate) {  // NOLINT: implicit on purpose, so options take lambdas directly
    if (detail::is_empty_callable(predicate)) return;
    auto shared = std::make_shared<const F>(std::move(predicate));
    fn = [shared](int64_t b, int64_t h, int64_t q, int64_t kv) -> bool {
      return (*shared)(b, h, q, kv);
    };
    row = &detail::mask_row<F>;
    functor = std::move(shared);
  }
  /// Whether the mask has a predicate.
  explicit operator bool() const { return row != nullptr; }
};

/// A score modifier compiled into a kernel row hook; built like `Mask` from any callable
/// `float(float score, int64_t b, int64_t h, int64_t q_idx, int64_t kv_idx)` (implicitly, or
/// with `score_fn`). A `ScoreMod` (std::function) is the type-erased fallback.
struct ScoreModFn {
  /// The element modifier (the composed reference).
  ScoreMod fn;
  /// Replaces every logit of a row segment (see RowHook), called with `functor`.
  RowHook row = nullptr;
  std::shared_ptr<const void> functor;

  /// No modifier.
  ScoreModFn() = default;
  template <class F, detail::if_score_callable_as<F, ScoreModFn> = 0>
  ScoreModFn(F modifier) {  // NOLINT: implicit on purpose, so options take lambdas directly
    if (detail::is_empty_callable(modifier)) return;
    auto shared = std::make_shared<const F>(std::move(modifier));
    fn = [shared](float s, int64_t b, int64_t h, int64_t q, int64_t kv) -> float {
      return (*shared)(s, b, h, q, kv);
    };
    row = &detail::score_row<F>;
    functor = std::move(shared);
  }
  /// Whether there is a modifier.
  explicit operator bool() const { return row != nullptr; }
};

/// A mask whose predicate `f` (any callable bool(b, h, q_idx, kv_idx)) is inlined into the
/// fused kernels; the same as the implicit conversion, spelled out.
/// Example:
///   auto m = mask_fn([](int64_t, int64_t, int64_t q, int64_t kv) { return kv <= q; });
template <class F>
Mask mask_fn(F f) {
  return Mask(std::move(f));
}

/// A score modifier `f` (any callable float(score, b, h, q_idx, kv_idx)) inlined into the fused
/// kernels; the same as the implicit conversion, spelled out.
/// Example:
///   auto s = score_fn([](float s, int64_t, int64_t, int64_t q, int64_t kv) {
///     return s - 0.01f * static_cast<float>(q - kv);
///   });
template <class F>
ScoreModFn score_fn(F f) {
  return ScoreModFn(std::move(f));
}

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
  /// Element mask applied inside partial blocks (empty: partial blocks are fully visible).
  Mask mask_mod;
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
/// exact classifier when it has one, else by evaluating its row hook over the block's rows).
/// B, H: 1 broadcasts over that dim (the mask must then not depend on it).
/// Example:
///   auto bm = create_block_mask(causal_mask(), 1, 1, T, T);
///   auto bm2 = create_block_mask(
///       mask_fn([](int64_t, int64_t, int64_t q, int64_t kv) { return q / 256 == kv / 256; }),
///       1, 1, T, T);
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
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  /// Key j visible to query i only if j <= i + (Tk - Tq) (bottom-right aligned). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Key j visible only if j >= i + (Tk - Tq) - window_left. Default: nullopt
  TORCH_ARG(std::optional<int64_t>, window_left) = std::nullopt;
  /// Key j visible only if j <= i + (Tk - Tq) + window_right. Default: nullopt
  TORCH_ARG(std::optional<int64_t>, window_right) = std::nullopt;
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
  TORCH_ARG(std::optional<BlockMask>, block_mask) = std::nullopt;
  /// Element mask evaluated on every visited element (only without block_mask); a lambda is
  /// inlined into the kernels (see `Mask`). Default: none
  TORCH_ARG(Mask, mask_mod) = {};
  /// Score modifier, after the bias and before the masks; a lambda is inlined into the kernels
  /// (see `ScoreModFn`). Default: none
  TORCH_ARG(ScoreModFn, score_mod) = {};
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
/// Mask and score functors given as lambdas are inlined into the kernels (see `Mask`).
/// Example:
///   auto r = functional::flex_attention(q, k, v, FlexAttentionOptions().causal(true));
///   auto r2 = functional::flex_attention(
///       q, k, v, FlexAttentionOptions()
///                    .mask_mod([](int64_t, int64_t, int64_t q_idx, int64_t kv_idx) {
///                      return (q_idx - kv_idx) % 2 == 0;
///                    })
///                    .score_mod([](float s, int64_t, int64_t h, int64_t, int64_t) {
///                      return s + 0.1f * static_cast<float>(h);
///                    }));
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

}  // namespace functional
}  // namespace attnkit
