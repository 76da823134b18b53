#pragma once
// Maskers: the pieces a research attention composes its sparse pattern from (sink, local, top-k,
// top-p, sampling). Each one reads the call's q, k, v and the mask built so far and returns a
// larger mask. This header holds the base class, the per-call inputs, the per-layer state, the
// JSON configuration and the registry; the maskers themselves live in fixed_maskers.h,
// learned_maskers.h and sampling_maskers.h.

#include <attnkit/sparse/mask.h>

#include <torch/types.h>

#include <concepts>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace attnkit {
namespace sparse {

/// A budget given as a fraction of the keys (a floating value: 0.1 = 10% of Tk) or as a count of
/// keys (an integer value: 128), as sparse-attention-hub's `heavy_size`, `window_size` and
/// `sink_size`. In JSON a number with a fraction or exponent part (0.1, 1.0) is a fraction, an
/// integer literal (128) a count.
class MaskerSize {
 public:
  /// A fraction of the keys.
  MaskerSize(double fraction) : value_(fraction), is_fraction_(true) {}  // NOLINT: implicit
  /// A count of keys.
  template <std::integral T>
  MaskerSize(T count) : value_(static_cast<double>(count)), is_fraction_(false) {}  // NOLINT
  /// int(value * n) for a fraction, the count itself otherwise.
  int64_t resolve(int64_t n) const {
    return is_fraction_ ? static_cast<int64_t>(value_ * static_cast<double>(n))
                        : static_cast<int64_t>(value_);
  }
  double value() const { return value_; }
  bool is_fraction() const { return is_fraction_; }
  /// "0.1" or "128", as in JSON.
  std::string str() const;

 private:
  double value_;
  bool is_fraction_;
};

/// One masker's JSON object, e.g. {"type": "local", "window_size": 128}, with typed getters that
/// raise a c10::Error naming the masker, the key, and what was expected and given. The getters
/// record which keys were read; `finish` then rejects any key that no getter asked for (a typo).
class MaskerConfig {
 public:
  /// Parses one JSON object with a string "type". Raises on malformed JSON or a missing type.
  static MaskerConfig parse(const std::string& json_object);

  /// The masker type, e.g. "local".
  const std::string& type() const { return type_; }
  /// The object as compact JSON text.
  std::string dump() const;
  bool has(const std::string& key) const;

  /// A number (integer or floating). Required when no fallback is given.
  double number(const std::string& key) const;
  double number(const std::string& key, double fallback) const;
  /// An integer literal.
  int64_t integer(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  /// A fraction (floating literal) or a count (integer literal).
  MaskerSize size(const std::string& key) const;
  MaskerSize size(const std::string& key, MaskerSize fallback) const;
  std::string string(const std::string& key) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  bool boolean(const std::string& key, bool fallback) const;

  /// Raises if the object holds a key that no getter read.
  void finish() const;

 private:
  MaskerConfig() = default;
  struct Json;
  std::shared_ptr<const Json> json_;
  std::string type_;
  mutable std::set<std::string> read_;
};

/// State kept across calls, per layer: sparse-attention-hub's `sparse_meta_data`. Maskers cache
/// what depends only on the keys (HashAttention's key signatures, MagicPig's projections and key
/// mean). Start a new state for each sequence.
class MaskerState {
 public:
  /// The tensor stored under (key, layer), or undefined.
  torch::Tensor get(const std::string& key, int64_t layer) const;
  void set(const std::string& key, int64_t layer, torch::Tensor value);
  bool has(const std::string& key, int64_t layer) const;
  void clear() { entries_.clear(); }
  /// The number of stored tensors.
  size_t size() const { return entries_.size(); }
  /// Every stored tensor by (key, layer).
  const std::map<std::pair<std::string, int64_t>, torch::Tensor>& entries() const {
    return entries_;
  }

 private:
  std::map<std::pair<std::string, int64_t>, torch::Tensor> entries_;
};

/// What a masker sees in one call (checked and sliced by `Masker::add_mask`).
struct MaskerInputs {
  /// [B, Hkv, Tk, D]
  torch::Tensor keys;
  /// [B, H, Tq, D], H % Hkv == 0
  torch::Tensor queries;
  /// [B, Hkv, Tk, Dv]
  torch::Tensor values;
  /// Additive mask on the scores, [B, 1 or H, Tq, Tk] (already sliced to Tk keys), or undefined.
  torch::Tensor attention_mask;
  double scaling = 1.0;
  double dropout = 0.0;
  MaskerState* state = nullptr;
  std::optional<int64_t> layer_idx;
  int64_t batch = 0, heads = 0, kv_heads = 0, q_len = 0, k_len = 0;

  /// {B, H, Tq, Tk}: the shape of every mask of the call.
  std::vector<int64_t> mask_shape() const { return {batch, heads, q_len, k_len}; }
  /// The layer index; raises naming `masker` when the caller gave none.
  int64_t layer(const char* masker) const;
  /// The keys repeated to H heads: [B, H, Tk, D] (a view when H == Hkv).
  torch::Tensor keys_per_head() const;
  /// queries . keys_per_head^T: [B, H, Tq, Tk] in float32 (float64 for double inputs), unscaled.
  torch::Tensor raw_scores() const;
};

/// What a masker is, for the "at most one sampling masker" rule.
enum class MaskerKind { kFixed, kTopK, kTopP, kSampling };

/// The base of every masker. `add_mask` checks the inputs, returns the previous mask unchanged
/// when it is already FULL (every masker, as upstream), and otherwise asks `compute`.
/// A new masker derives from it, implements `type`, `kind` and `compute`, and registers a
/// factory with `register_masker` (see docs/maskers.md).
class Masker {
 public:
  virtual ~Masker() = default;

  /// The mask after this masker: previous_mask plus what it adds.
  ///   keys: [B, Hkv, Tk, D], queries: [B, H, Tq, D], values: [B, Hkv, Tk, Dv],
  ///   attention_mask: additive, [B, 1 or H, Tq, >= Tk] (its first Tk columns are used), or
  ///                   undefined; scaling: the multiplier of q.k in the attention;
  ///   previous_mask: [B, H, Tq, Tk]; layer_idx: needed by maskers that cache per layer.
  Mask add_mask(const torch::Tensor& keys,
                const torch::Tensor& queries,
                const torch::Tensor& values,
                const torch::Tensor& attention_mask,
                double scaling,
                double dropout,
                MaskerState& state,
                const Mask& previous_mask,
                std::optional<int64_t> layer_idx = std::nullopt) const;

  /// The registry name, e.g. "local".
  virtual std::string type() const = 0;
  virtual MaskerKind kind() const = 0;

 protected:
  /// The new mask; `previous` is not FULL. Shapes are already checked.
  virtual Mask compute(const MaskerInputs& in, const Mask& previous) const = 0;
};

using MaskerPtr = std::shared_ptr<const Masker>;
using MaskerFactory = std::function<MaskerPtr(const MaskerConfig&)>;

/// Registers a factory under `type` (replacing none: a taken name raises).
void register_masker(const std::string& type, MaskerFactory factory);
/// The registered type names, sorted.
std::vector<std::string> masker_types();
/// A masker from one JSON object, e.g. R"({"type": "sink", "sink_size": 128})".
MaskerPtr make_masker(const std::string& json_object);
/// Maskers from a JSON array of objects, in order. Raises when more than one is a sampling
/// masker.
std::vector<MaskerPtr> make_maskers(const std::string& json_array);

// ---- helpers for writing maskers ----------------------------------------------------------

/// Checks one attention call's inputs and returns {B, H, Tq, Tk}: queries [B, H, Tq, D], keys
/// [B, Hkv, Tk, D] with H % Hkv == 0, values [B, Hkv, Tk, Dv], attention_mask additive
/// [B, 1 or H, Tq, >= Tk] or undefined. Messages start with `who`.
std::vector<int64_t> check_call(const std::string& who,
                                const torch::Tensor& queries,
                                const torch::Tensor& keys,
                                const torch::Tensor& values,
                                const torch::Tensor& attention_mask);

/// `scores` with every entry active in `mask` (value > 0) set to `fill`; scores has the mask's
/// shape. Used by top-k maskers so that they pick new keys only.
torch::Tensor fill_active(const torch::Tensor& scores, const Mask& mask, double fill);
/// The same from a mask's row lists (or a slice of them along a leading dim): scores [*, n],
/// lists [*, K].
torch::Tensor fill_active(const torch::Tensor& scores, const RowLists& lists, double fill);

/// The mask without the keys after each query's position: entry (.., i, j) is kept only if
/// j <= n - Tq + i, with Tq = shape[-2] (queries aligned to the end of the keys). FULL and EMPTY
/// become the DENSE causal pattern; INDEX stays INDEX.
Mask drop_future(const Mask& mask);

/// The columns [Tq, w] of a window of w keys ending at each query's position:
/// pos(i) - w + 1 ... pos(i), pos(i) = n - Tq + i (entries below 0 are -1).
torch::Tensor window_columns(int64_t q_len, int64_t n, int64_t w, torch::Device device);

/// A mask of weight 1 at each row's columns `idx` [*, k] (k may be 0: EMPTY), INDEX form.
Mask mask_from_columns(std::vector<int64_t> shape, const torch::Tensor& idx, torch::Dtype dtype);

}  // namespace sparse
}  // namespace attnkit
