#pragma once
// A sequence-to-sequence module around research attention: grouped q/k/v/o projections with the
// attention of a masker configuration (sink + local + top-k or sampling), so a masker pattern
// can be trained, decoded and compared with the other mechanisms like any of them.

#include <attnkit/attention/attention.h>
#include <attnkit/sparse/research_attention.h>

#include <torch/nn/modules/linear.h>

#include <string>

namespace attnkit {

/// Options of `ResearchAttentionModule`.
/// Example:
///   ResearchAttentionModule attn(ResearchAttentionModuleOptions(512, 8, 2).maskers(
///       R"([{"type":"sink","sink_size":4},{"type":"local","window_size":64},
///           {"type":"oracle_top_k","heavy_size":0.1}])"));
struct ResearchAttentionModuleOptions {
  ResearchAttentionModuleOptions(int64_t dim, int64_t num_heads, int64_t num_kv_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of query heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Number of key/value heads (num_heads % num_kv_heads == 0). Required.
  TORCH_ARG(int64_t, num_kv_heads);
  /// The masker configuration: a JSON array of masker objects (see sparse::make_maskers); "[]"
  /// is dense attention. Default: sink 4 + local 64 + oracle top-k 10%
  TORCH_ARG(std::string, maskers) =
      R"([{"type":"sink","sink_size":4},{"type":"local","window_size":64},)"
      R"({"type":"oracle_top_k","heavy_size":0.1}])";
  /// Width of one head. 0 means dim / num_heads. Default: 0
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Mask future keys through the additive attention mask the maskers see (and allow
  /// decoding). Default: true
  TORCH_ARG(bool, causal) = true;
  /// Dropout on the attention weights in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
  /// The layer index the maskers cache their per-layer state under. Default: 0
  TORCH_ARG(int64_t, layer_idx) = 0;
};

/// Research attention as a layer. x: [B, T, dim] -> [B, T, dim].
/// q = q_proj(x), k = k_proj(x), v = v_proj(x) split into heads; the maskers build the mask from
/// them with the additive mask (causal, plus a per-call attn_mask) and scaling 1/sqrt(head_dim);
/// the attention under the mask (sparse::masked_attention) goes through o_proj.
/// Parameters: q_proj [H*hd, dim], k_proj and v_proj [Hkv*hd, dim], o_proj [dim, H*hd].
/// As upstream, the maskers are built for decoding: in a prefill (Tq == Tk) a local window
/// covers every key, so a configuration holding one is dense attention there. A causal prefill
/// materialises a [T, T] additive mask for the maskers (O(T^2) memory); decoding steps (Tq = 1)
/// need none. The decode state keeps the k/v cache and the maskers' per-layer caches.
class ResearchAttentionModuleImpl : public AttentionCloneable<ResearchAttentionModuleImpl> {
 public:
  explicit ResearchAttentionModuleImpl(ResearchAttentionModuleOptions options);
  ResearchAttentionModuleImpl(int64_t dim, int64_t num_heads, int64_t num_kv_heads);

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
  std::string mechanism() const override { return "ResearchAttentionModule"; }
  int64_t dim() const override { return options.dim(); }

  /// The maskers and attention of `options.maskers`.
  const sparse::ResearchAttention& research_attention() const { return research_; }

  ResearchAttentionModuleOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
  int64_t head_dim() const;
  sparse::ResearchAttention research_;
};
ATTNKIT_ATTENTION_MODULE(ResearchAttentionModule);

}  // namespace attnkit
