#pragma once
// Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs"): softmax(q k^T) is
// replaced by phi(q) phi(k)^T, so attention is phi(q) (sum_j phi(k_j) v_j^T) / (phi(q) .
// sum_j phi(k_j)): O(T) in the sequence length, and the causal form is a recurrence with a
// constant-size state. attzoo's LinearSelfAttention, multi-head and with the causal form
// (docs/catalog.md, "Linear attention").

#include <attnkit/attention/attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// The feature map phi applied to queries and keys (both must stay non-negative).
enum class LinearFeatureMap {
  /// elu(x) + 1 (Katharopoulos et al., 2020; attzoo).
  kEluPlusOne,
  /// relu(x); a query whose features all vanish gets a zero output.
  kRelu,
};

const char* to_string(LinearFeatureMap map);

/// Options for `LinearAttention`.
/// Example:
///   LinearAttention attn(LinearAttentionOptions(/*dim=*/256, /*num_heads=*/4).causal(true));
struct LinearAttentionOptions {
  LinearAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; the value width per head is dim / num_heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Width F of the query/key features per head. 0 means dim / num_heads. Default: 0
  TORCH_ARG(int64_t, feature_dim) = 0;
  /// phi. Default: LinearFeatureMap::kEluPlusOne
  TORCH_ARG(LinearFeatureMap, feature_map) = LinearFeatureMap::kEluPlusOne;
  /// Prefix sums instead of whole-sequence sums (and allow decoding). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Added to the normaliser phi(q) . sum phi(k). Default: 1e-6
  TORCH_ARG(double, eps) = 1e-6;
  /// Tokens per chunk of the causal form: inside a chunk a masked T_c x T_c product, across
  /// chunks the running state. Default: 64
  TORCH_ARG(int64_t, chunk_size) = 64;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
  /// Rotary embedding on each head's query and key projections (width feature_dim) before phi,
  /// at absolute positions (a decode state's tokens continue at state.length()); unset means
  /// none. attzoo's rope=True (pairs (2i, 2i + 1) over all F channels, theta 10000) is
  /// RopeOptions().style(RopeStyle::kInterleaved). Default: nullopt
  TORCH_ARG(std::optional<RopeOptions>, rope) = std::nullopt;
};

/// Linear attention. x: [B, T, dim] -> [B, T, dim].
/// Per head, with q = phi(rope(q_proj x)) [T, F], k = phi(rope(k_proj x)) [T, F] (rope only
/// when set), v = v_proj x [T, Dv]:
///   non-causal: out_i = q_i S / (q_i . z + eps), S = sum_j k_j v_j^T [F, Dv], z = sum_j k_j;
///   causal: the same with S_i, z_i summed over j <= i (chunked prefix sums, chunk_size).
/// Parameters: q_proj, k_proj [H F, dim], v_proj, o_proj [dim, dim] (attzoo's w_q, w_k, w_v,
/// w_o; no public attzoo checkpoints exist, so the library-wide names are used).
/// forward(x, attn_mask): a bool keep mask (true = attend; [T, T], [B, T, T] or
/// [B, 1|H, T, T]) in the quadratic form out_i = sum_j a_ij v_j / (sum_j a_ij + eps),
/// a_ij = keep_ij q_i . k_j (AND-ed with causal); a query that keeps no key gives zeros. Float
/// (additive) masks have no meaning here and raise.
/// forward_with_aux: the exact weights a_ij / (sum_j a_ij + eps) [B, H, T, T].
/// Decoding (causal only): the state holds S [B, H, F, Dv] and z [B, H, F]; each token costs
/// O(F Dv) whatever the position.
/// Deviations from attzoo: several heads (attzoo: one); the causal form (attzoo: non-causal
/// only); the weights are the exact normalised products (attzoo returns an estimate
/// (phi q / sum phi q)(phi k / sum phi k)^T); masks are bool keep masks over (query, key)
/// pairs (attzoo reduces a mask to a per-token mask, reading only its diagonal); no dropout
/// (attzoo: 0.1 on the output).
class LinearAttentionImpl : public AttentionCloneable<LinearAttentionImpl> {
 public:
  explicit LinearAttentionImpl(LinearAttentionOptions options);
  LinearAttentionImpl(int64_t dim, int64_t num_heads);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask) override;
  torch::Tensor forward(const torch::Tensor& x, DecodeState& state) override;
  DecodeState init_state(int64_t batch_size) const override;
  bool supports_decoding() const override { return options.causal(); }
  AttentionOutput forward_with_aux(const torch::Tensor& x,
                                   const torch::Tensor& attn_mask = {}) override;
  std::string mechanism() const override { return "LinearAttention"; }
  int64_t dim() const override { return options.dim(); }

  LinearAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  torch::Tensor features(const torch::Tensor& x) const;
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
  std::optional<RotaryEmbedding> rope_;
};
ATTNKIT_ATTENTION_MODULE(LinearAttention);

}  // namespace attnkit
