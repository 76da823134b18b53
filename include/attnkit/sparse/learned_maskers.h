#pragma once
// The learned top-k maskers: HashAttention (bit signatures from trained MLPs), Quest (page
// min/max bounds) and DoubleSparsity (a few outlier channels picked offline). Each one scores the
// keys more cheaply than q.k and adds the best k of them per query, as sparse-attention-hub's
// HashAttentionTopKMasker, QuestTopKMasker and DoubleSparsityTopKMasker. Scores are computed in
// float32 (float64 for double inputs) on the inputs' device.

#include <attnkit/sparse/masker.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace attnkit {
namespace sparse {

// ~~~ helpers ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

/// Pseudo-quantisation (sparse-attention-hub's `pseudo_quantize`): each vector along the last
/// dim is rounded to 2^bits - 1 equal steps between its own min and max, then mapped back:
///   lo = min(x), r = max(x) - lo (1 where it is 0), s = (2^bits - 1) / r,
///   x' = clamp(round((x - lo) * s), 0, 2^bits - 1) / s + lo
/// (round half to even, as torch.round). x: [*, n], n >= 1, floating.
torch::Tensor pseudo_quantize(const torch::Tensor& x, int64_t bits);

/// The columns [B, H, Tq, k] of each query's k largest scores among the keys not active in
/// `previous` (active keys are set to -inf first, so they are chosen only when fewer than k
/// others exist). `scores(q0, count)` returns the scores [B, H, count, Tk] of queries
/// q0 ... q0 + count - 1 (attention_mask included); it is called a block of queries at a time,
/// so memory stays O(block * Tk). k >= 1, k <= Tk.
torch::Tensor top_k_inactive(const MaskerInputs& in,
                             const Mask& previous,
                             int64_t k,
                             const std::function<torch::Tensor(int64_t, int64_t)>& scores);

// ~~~ HashAttention ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

/// One MLP of HashAttention, with separate weights per attention head: for each MLP layer l,
/// matrix[l] [H, d_in_l, d_out_l] and bias[l] [H, d_out_l] (d_in_0 = head dim, d_out_l =
/// d_in_{l+1}, the last d_out = hat_bits).
struct HashAttentionMlp {
  std::vector<torch::Tensor> matrix;
  std::vector<torch::Tensor> bias;
};

/// The two MLPs of one attention layer: upstream's {"query_matrix", "query_bias", "key_matrix",
/// "key_bias"}.
struct HashAttentionLayerWeights {
  HashAttentionMlp query;
  HashAttentionMlp key;
};

/// Weights by attention layer index: upstream's `hat_weights`.
using HashAttentionWeights = std::map<int64_t, HashAttentionLayerWeights>;

/// Reads a HashAttention weight file: torch's own serialisation (the zip format of
/// `torch.save` in Python and `torch::pickle_save` in C++) of upstream's `hat_weights` dict,
///   {layer (int): {"query_matrix": [W_0, W_1, ...], "query_bias": [b_0, ...],
///                  "key_matrix": [...], "key_bias": [...]}}
/// with W_l [H, d_in, d_out] and b_l [H, d_out] tensors (lists or tuples; other keys of a
/// layer are ignored). An upstream pickle converts with
///   torch.save(pickle.load(open("hat.pkl", "rb")), "hat.pt")
/// Tensors are loaded on the CPU. Raises naming the path and the part that is wrong.
HashAttentionWeights load_hash_attention_weights(const std::string& path);

/// Writes `weights` in the layout `load_hash_attention_weights` reads, with torch::pickle_save.
/// Python reads it with torch.load(path, weights_only=False) (LibTorch tags its containers with
/// torch.jit._pickle.restore_type_tag, which the weights_only loader rejects).
void save_hash_attention_weights(const HashAttentionWeights& weights, const std::string& path);

/// Options of `HashAttentionTopKMasker`. Exactly one of hat_weights and hat_weight_file.
struct HashAttentionTopKMaskerOptions {
  HashAttentionTopKMaskerOptions(MaskerSize heavy_size,
                                 int64_t hat_bits,
                                 int64_t hat_mlp_layers,
                                 int64_t hat_mlp_hidden_size,
                                 std::string hat_mlp_activation)
      : heavy_size_(heavy_size),
        hat_bits_(hat_bits),
        hat_mlp_layers_(hat_mlp_layers),
        hat_mlp_hidden_size_(hat_mlp_hidden_size),
        hat_mlp_activation_(std::move(hat_mlp_activation)) {}
  /// Keys added per query (> 0): a count, or a fraction of Tk.
  TORCH_ARG(MaskerSize, heavy_size);
  /// Signature bits: the output width of the last MLP layer (> 0).
  TORCH_ARG(int64_t, hat_bits);
  /// Linear layers per MLP (> 0).
  TORCH_ARG(int64_t, hat_mlp_layers);
  /// Output width of every MLP layer but the last (> 0).
  TORCH_ARG(int64_t, hat_mlp_hidden_size);
  /// Activation between MLP layers: "relu", "silu", "gelu" (exact, erf) or "tanh".
  TORCH_ARG(std::string, hat_mlp_activation);
  /// In-memory weights. Default: none.
  TORCH_ARG(std::optional<HashAttentionWeights>, hat_weights) = std::nullopt;
  /// A weight file (see `load_hash_attention_weights`). Default: none.
  TORCH_ARG(std::optional<std::string>, hat_weight_file) = std::nullopt;
};

/// Which MLP `HashAttentionTopKMasker::signatures` runs.
enum class HashAttentionSide { kQuery, kKey };

/// HashAttention top-k: queries and keys are mapped to sign vectors by per-head MLPs,
///   sig(x) = sign(W_{L-1}^T act(... act(W_0^T x + b_0) ...) + b_{L-1})
/// (activation between layers, none after the last; sign(0) = 0), and each query adds the k
/// keys of largest sig_q . sig_k + attention_mask among the keys not yet active (active ones are
/// set to -inf). GQA: the keys are repeated to the H query heads before their MLP (the weights
/// have H heads). Key signatures [B, H, Tk, hat_bits] are cached in the MaskerState under
/// ("hash_attention.key_signatures", layer) and extended with only the new keys when Tk grows
/// (fewer keys than cached raises: start a new state per sequence). Needs layer_idx. FULL when
/// Tk <= k. The configuration is checked against the weights when the masker is built (layer
/// count, hidden and output widths, heads); heads and head dim against the inputs per call.
/// JSON (a file is the only way to give weights):
///   {"type": "hash_attention_top_k", "heavy_size": 0.1, "hat_bits": 32, "hat_mlp_layers": 3,
///    "hat_mlp_hidden_size": 128, "hat_mlp_activation": "silu", "hat_weight_file": "hat.pt"}
class HashAttentionTopKMasker : public Masker {
 public:
  explicit HashAttentionTopKMasker(HashAttentionTopKMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "hash_attention_top_k"; }
  MaskerKind kind() const override { return MaskerKind::kTopK; }
  const HashAttentionTopKMaskerOptions& options() const { return options_; }
  /// The weights in use (given or loaded from the file), as given (CPU for a file).
  const HashAttentionWeights& weights() const { return weights_; }

  /// The signatures [B, H, T, hat_bits] of x [B, H, T, D] (queries, or keys already repeated to
  /// H heads) under layer `layer`'s query or key MLP, in float32 (float64 for double x).
  torch::Tensor signatures(const torch::Tensor& x, int64_t layer, HashAttentionSide side) const;

  /// The MaskerState key of the cached key signatures.
  static constexpr const char* kKeySignatures = "hash_attention.key_signatures";

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  // Layer `layer`'s weights on `device` in `dtype`, converted once and kept.
  HashAttentionLayerWeights layer_weights(int64_t layer,
                                          torch::Device device,
                                          torch::Dtype dtype) const;
  // The key signatures of every key of the call, from the cache plus the new keys.
  torch::Tensor key_signatures(const MaskerInputs& in, int64_t layer) const;

  HashAttentionTopKMaskerOptions options_;
  HashAttentionWeights weights_;
  mutable std::mutex converted_mutex_;
  mutable std::map<std::tuple<std::string, int, int64_t>, HashAttentionLayerWeights> converted_;
};

// ~~~ Quest ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

/// Options of `QuestTopKMasker`.
struct QuestTopKMaskerOptions {
  QuestTopKMaskerOptions(MaskerSize heavy_size, int64_t page_size)
      : heavy_size_(heavy_size), page_size_(page_size) {}
  /// Token budget per query (> 0): a count, or a fraction of Tk.
  TORCH_ARG(MaskerSize, heavy_size);
  /// Keys per page (> 0).
  TORCH_ARG(int64_t, page_size);
  /// Bits of the page bounds, in [1, 16]; below 16 they are pseudo-quantised. Default: 16.
  TORCH_ARG(int64_t, label_bits) = 16;
};

/// Quest page top-k. The keys (repeated to the H query heads) are cut into P = ceil(Tk /
/// page_size) pages of page_size keys (the last one partial); each page keeps its per-channel
/// min and max over its keys, [B, H, P, D]. With label_bits < 16 the min vector and the max
/// vector of each page are each pseudo-quantised across their D channels (`pseudo_quantize`).
/// A query scores page p by the bound sum_d max(q_d * min_pd, q_d * max_pd); pages without an
/// allowed token (additive attention_mask >= 0; every token without a mask; a page counts as
/// allowed for every head when a per-head mask allows it in any head) get the dtype's lowest
/// value. Each query takes its k_pages = min(P, max(3, k // page_size)) best pages, and the mask
/// becomes
///   new = max(previous, tokens of the chosen pages) * allowed
/// as a DENSE mask: previously active pages can be chosen again, and previously active tokens
/// that the attention_mask forbids are dropped (upstream's rule). FULL when Tk <= max(1, k).
/// JSON: {"type": "quest_top_k", "heavy_size": 0.1, "page_size": 16, "label_bits": 16}
class QuestTopKMasker : public Masker {
 public:
  explicit QuestTopKMasker(QuestTopKMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "quest_top_k"; }
  MaskerKind kind() const override { return MaskerKind::kTopK; }
  const QuestTopKMaskerOptions& options() const { return options_; }

  /// The per-page channel bounds (min, max), each [B, Hkv, P, D], of keys [B, Hkv, Tk, D],
  /// pseudo-quantised when label_bits < 16; float32 (float64 for double keys).
  std::pair<torch::Tensor, torch::Tensor> page_bounds(const torch::Tensor& keys) const;

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  QuestTopKMaskerOptions options_;
};

// ~~~ DoubleSparsity ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

/// Options of `DoubleSparsityTopKMasker`.
struct DoubleSparsityTopKMaskerOptions {
  DoubleSparsityTopKMaskerOptions(MaskerSize heavy_size, std::string sorted_channel_file)
      : heavy_size_(heavy_size), sorted_channel_file_(std::move(sorted_channel_file)) {}
  /// Keys added per query (> 0): a count, or a fraction of Tk.
  TORCH_ARG(MaskerSize, heavy_size);
  /// The JSON channel file (see `DoubleSparsityTopKMasker`); must exist.
  TORCH_ARG(std::string, sorted_channel_file);
  /// head_dim // group_factor channels per head are used (> 0). Default: 16.
  TORCH_ARG(int64_t, group_factor) = 16;
  /// Bits of the channel values, in [1, 16]; below 16 they are pseudo-quantised. Default: 4.
  TORCH_ARG(int64_t, label_bits) = 4;
  /// The projection whose channel order is read: the file key's last part ("qk_proj",
  /// "q_proj", "k_proj"). Default: "qk_proj".
  TORCH_ARG(std::string, channel_selection) = "qk_proj";
};

/// DoubleSparsity top-k: each query head keeps r = head_dim // group_factor outlier channels,
/// read from an offline calibration file, and scores the keys (repeated to the H query heads)
/// on those channels only:
///   s = pq(q[..., c]) . pq(k[..., c])^T / sqrt(r) + attention_mask
/// where c are the head's first r channels in the file's order and pq is `pseudo_quantize`
/// across the r channels of each query and key vector (when label_bits < 16). Each query adds
/// the k keys of largest s among those not yet active (active ones are set to -inf). Needs
/// layer_idx. FULL when Tk - Tq <= k.
/// The channel file is upstream's JSON: an object whose key
/// "model.layers.<layer>.self_attn.<channel_selection>" holds, per query head, the head's
/// channel indices in [0, head_dim), outlier channels first:
///   {"model.layers.0.self_attn.qk_proj": [[5, 2, 7, ...], [1, 0, ...], ...], ...}
/// Every value must be a list of lists of integers (checked when the masker is built); per call
/// the layer's entry must exist, have H lists, each with at least r channels in range.
/// JSON: {"type": "double_sparsity_top_k", "heavy_size": 0.1,
///        "sorted_channel_file": "channels.json", "group_factor": 16, "label_bits": 4,
///        "channel_selection": "qk_proj"}
class DoubleSparsityTopKMasker : public Masker {
 public:
  explicit DoubleSparsityTopKMasker(DoubleSparsityTopKMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "double_sparsity_top_k"; }
  MaskerKind kind() const override { return MaskerKind::kTopK; }
  const DoubleSparsityTopKMaskerOptions& options() const { return options_; }

  /// The outlier channels [heads, head_dim // group_factor] (int64) that layer `layer` uses,
  /// checked against heads and head_dim.
  torch::Tensor channels(int64_t layer,
                         int64_t heads,
                         int64_t head_dim,
                         torch::Device device = torch::kCPU) const;

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  DoubleSparsityTopKMaskerOptions options_;
  // The file's content: key -> per head channel lists.
  std::map<std::string, std::vector<std::vector<int64_t>>> sorted_channels_;
};

}  // namespace sparse
}  // namespace attnkit
