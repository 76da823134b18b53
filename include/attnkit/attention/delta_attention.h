#pragma once
// Delta attention (Willette et al., NeurIPS 2025): sliding-window plus sink attention, corrected
// by the gap between full and sparse attention measured on every stride-th query.
// attnhut's DeltaAttention (docs/catalog.md, "Delta attention").

#include <attnkit/attention/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// Options for `DeltaAttention`.
/// Example:
///   DeltaAttention attn(DeltaAttentionOptions(/*dim=*/512,
///   /*num_heads=*/8).window(128).stride(8));
struct DeltaAttentionOptions {
  DeltaAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Recent keys each query sees in the sparse base, itself included: key j is in the window of
  /// query i iff i - window < j <= i. Default: 256
  TORCH_ARG(int64_t, window) = 256;
  /// Leading keys every query also sees in the sparse base (the attention sink). Default: 4
  TORCH_ARG(int64_t, sink) = 4;
  /// One dense anchor query per stride rows; 1 gives exactly full causal attention. Default: 16
  TORCH_ARG(int64_t, stride) = 16;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
};

/// Delta attention, always causal. x: [B, T, dim] -> [B, T, dim].
/// Per head, with sparse(r) the softmax attention of query r over keys
/// {j <= r : j > r - window or j < sink} and dense(r) the full causal attention of query r:
///   out(r) = sparse(r) + dense(a) - sparse(a),   a = floor(r / stride) * stride,
/// then the heads are merged and projected by o_proj.
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attnhut's fused qkv [3 dim, dim] split
/// into three, and proj renamed o_proj).
/// Decoding caches k and v [B, H, L, hd] and the correction dense(a) - sparse(a) [B, H, 1, hd]
/// of the latest anchor a, so a chunk whose first rows belong to an earlier anchor reuses it;
/// chunked and token-by-token decoding equal the full forward.
/// forward_with_aux returns the effective weights [B, H, T, T] of the linear map on v:
/// w_sparse(r) + w_dense(a) - w_sparse(a) (rows sum to 1, entries may be negative).
/// Deviation from attnhut: masked logits are -inf rather than a finite minimum (no row is ever
/// fully masked here: window >= 1 keeps the query's own key).
class DeltaAttentionImpl : public AttentionCloneable<DeltaAttentionImpl> {
 public:
  explicit DeltaAttentionImpl(DeltaAttentionOptions options);
  DeltaAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  using AttentionImpl::forward;  // forward(x, attn_mask): no mask support, raises if defined
  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return true; }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "DeltaAttention"; }
  int64_t dim() const override { return options.dim(); }

  /// The sparse-base keep mask [Tq, Tk] for queries at positions offset .. offset + Tq - 1
  /// over keys 0 .. Tk - 1 (true = attend).
  torch::Tensor sparse_keep_mask(int64_t seq_len_q,
                                 int64_t seq_len_kv,
                                 int64_t offset,
                                 torch::Device device) const;

  DeltaAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x, DecodeState* state, bool need_weights);
};
ATTNKIT_ATTENTION_MODULE(DeltaAttention);

}  // namespace attnkit
