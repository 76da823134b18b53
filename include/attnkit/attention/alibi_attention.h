#pragma once
// ALiBi: attention with linear biases (Press et al., 2022, "Train Short, Test Long"): no
// position embedding; each head adds -m_h * distance to its logits. attzoo's AlibiSelfAttention,
// with the causal form of the paper (docs/catalog.md, "ALiBi attention").

#include <attnkit/attention/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>

namespace attnkit {

/// The standard ALiBi head slopes: Float [num_heads] on the CPU. For a power of two n,
/// m_h = (2^(-8/n))^(h+1); otherwise, with p the largest power of two below n, the p slopes of
/// p followed by the even-indexed slopes of 2p (slopes(2p)[0], [2], ...) up to n in all (the
/// reference implementation of the paper). num_heads = 1 gives 2^-8.
/// Example:
///   alibi_slopes(8)  // 1/2, 1/4, ..., 1/256
torch::Tensor alibi_slopes(int64_t num_heads);

/// The ALiBi bias [H, seq_len_q, seq_len_kv] in slopes' dtype and device:
/// bias[h, i, j] = -slopes[h] * |pos(i) - j| with pos(i) = i + seq_len_kv - seq_len_q (queries
/// are the last seq_len_q positions, as when decoding). Symmetric for seq_len_q == seq_len_kv.
torch::Tensor alibi_bias(const torch::Tensor& slopes, int64_t seq_len_q, int64_t seq_len_kv);

/// Options for `ALiBiAttention`.
/// Example:
///   ALiBiAttention attn(ALiBiAttentionOptions(/*dim=*/256, /*num_heads=*/8).causal(true));
struct ALiBiAttentionOptions {
  ALiBiAttentionOptions(int64_t dim, int64_t num_heads);
  /// Model width of the input and output. Required.
  TORCH_ARG(int64_t, dim);
  /// Number of heads; head_dim = dim / num_heads; head h uses alibi_slopes(num_heads)[h].
  /// Required.
  TORCH_ARG(int64_t, num_heads);
  /// Mask future keys (the paper's language-model form; allows decoding). False gives the
  /// symmetric bias -m |i - j| over all keys (attzoo). Default: false
  TORCH_ARG(bool, causal) = false;
  /// Softmax temperature: logits are q.k / (sqrt(head_dim) * temperature) + bias. Default: 1
  TORCH_ARG(double, temperature) = 1.0;
  /// Dropout on the attention weights in training mode. Default: 0
  TORCH_ARG(double, dropout) = 0.0;
  /// Bias on the q, k, v and o projections. Default: false
  TORCH_ARG(bool, bias) = false;
};

/// ALiBi attention. x: [B, T, dim] -> [B, T, dim].
/// Multi-head softmax attention whose logits get alibi_bias(alibi_slopes(H), T, T), passed to
/// functional::dot_product_attention as its additive bias (a score modifier for the fused
/// engine). Lengths are unbounded (the bias is computed per call; attzoo's max_seq_len buffer
/// is not needed).
/// Parameters: q_proj, k_proj, v_proj, o_proj [dim, dim] (attzoo's w_q, w_k, w_v, w_o; no
/// public attzoo checkpoints exist, so the library-wide names are used). No buffers.
/// forward(x, attn_mask): a bool mask (true = attend) masks keys, a float mask is added to the
/// logits on top of the ALiBi bias.
/// Decoding (causal only): caches k and v [B, H, L, hd]; a chunk's queries sit at positions
/// offset + t.
/// Deviations from attzoo: num_heads = 1 uses the standard slope 2^-8 (attzoo: 1.0); dropout
/// defaults to 0 (attzoo: 0.1 on the weights); a query that sees no key gives zeros (attzoo:
/// NaN).
class ALiBiAttentionImpl : public AttentionCloneable<ALiBiAttentionImpl> {
 public:
  explicit ALiBiAttentionImpl(ALiBiAttentionOptions options);
  ALiBiAttentionImpl(int64_t dim, int64_t num_heads);

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
  std::string mechanism() const override { return "ALiBiAttention"; }
  int64_t dim() const override { return options.dim(); }

  ALiBiAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  AttentionOutput run(const torch::Tensor& x,
                      const torch::Tensor& attn_mask,
                      DecodeState* state,
                      bool need_weights);
};
ATTNKIT_ATTENTION_MODULE(ALiBiAttention);

}  // namespace attnkit
