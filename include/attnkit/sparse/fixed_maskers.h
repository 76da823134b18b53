#pragma once
// The fixed and oracle maskers: local window, causal, attention sinks, oracle top-k and oracle
// top-p. pos(i) = Tk - Tq + i is query i's absolute position (queries aligned to the end of the
// keys, as in decoding).

#include <attnkit/sparse/masker.h>

#include <torch/arg.h>

namespace attnkit {
namespace sparse {

/// Options of `LocalMasker`.
struct LocalMaskerOptions {
  explicit LocalMaskerOptions(MaskerSize window_size) : window_size_(window_size) {}
  /// Keys per window (> 0): a count, or a fraction of Tk.
  TORCH_ARG(MaskerSize, window_size);
};

/// A sliding window: query i keeps keys pos(i) - w + 1 ... pos(i), and every key after pos(i)
/// is removed from the previous mask. FULL when Tk <= w + Tq (so always in a prefill, Tq == Tk).
/// JSON: {"type": "local", "window_size": 128}
class LocalMasker : public Masker {
 public:
  explicit LocalMasker(LocalMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "local"; }
  MaskerKind kind() const override { return MaskerKind::kFixed; }
  const LocalMaskerOptions& options() const { return options_; }

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  LocalMaskerOptions options_;
};

/// Causality: removes from the previous mask every key after the query's position (key
/// j > pos(i)), so a prefill (Tq == Tk) attends causally. sparse-attention-hub's CausalMasker
/// adds nothing and leaves causality to the additive attention mask; this one does mask (see
/// docs/maskers.md). On an EMPTY previous mask it builds the full causal pattern.
/// JSON: {"type": "causal"}
class CausalMasker : public Masker {
 public:
  CausalMasker() = default;
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "causal"; }
  MaskerKind kind() const override { return MaskerKind::kFixed; }

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;
};

/// Options of `SinkMasker`.
struct SinkMaskerOptions {
  explicit SinkMaskerOptions(MaskerSize sink_size) : sink_size_(sink_size) {}
  /// Leading keys every query keeps (> 0): a count, or a fraction of Tk.
  TORCH_ARG(MaskerSize, sink_size);
};

/// Attention sinks: every query keeps keys 0 ... sink - 1. FULL when Tk <= sink.
/// JSON: {"type": "sink", "sink_size": 128}
class SinkMasker : public Masker {
 public:
  explicit SinkMasker(SinkMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "sink"; }
  MaskerKind kind() const override { return MaskerKind::kFixed; }
  const SinkMaskerOptions& options() const { return options_; }

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  SinkMaskerOptions options_;
};

/// Options of `OracleTopKMasker`.
struct OracleTopKMaskerOptions {
  explicit OracleTopKMaskerOptions(MaskerSize heavy_size) : heavy_size_(heavy_size) {}
  /// Keys added per query (> 0): a count, or a fraction of Tk.
  TORCH_ARG(MaskerSize, heavy_size);
};

/// Oracle top-k: each query adds the k keys of largest unscaled q.k + attention_mask among the
/// keys not yet active (active ones are set to the dtype's lowest value, so they are chosen only
/// when fewer than k others exist). FULL when Tk <= k. The scores are computed a block of
/// queries at a time, so memory stays O(block * Tk) beyond the mask.
/// JSON: {"type": "oracle_top_k", "heavy_size": 0.1}
class OracleTopKMasker : public Masker {
 public:
  explicit OracleTopKMasker(OracleTopKMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "oracle_top_k"; }
  MaskerKind kind() const override { return MaskerKind::kTopK; }
  const OracleTopKMaskerOptions& options() const { return options_; }

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  OracleTopKMaskerOptions options_;
};

/// Options of `OracleTopPMasker`.
struct OracleTopPMaskerOptions {
  explicit OracleTopPMaskerOptions(double top_p) : top_p_(top_p) {}
  /// Probability mass to cover, in [0, 1].
  TORCH_ARG(double, top_p);
};

/// Oracle top-p: with E = exp(s - max s), s = q.k * scaling + attention_mask, and the previously
/// active keys removed (E = 0 there), each query adds the keys of largest E until their share of
/// the row's sum reaches top_p (the first position whose cumulative share exceeds top_p is
/// included; ties with the threshold value are all kept). FULL when int(top_p * Tk) >= Tk.
/// JSON: {"type": "oracle_top_p", "top_p": 0.9}
class OracleTopPMasker : public Masker {
 public:
  explicit OracleTopPMasker(OracleTopPMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "oracle_top_p"; }
  MaskerKind kind() const override { return MaskerKind::kTopP; }
  const OracleTopPMaskerOptions& options() const { return options_; }

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  OracleTopPMaskerOptions options_;
};

}  // namespace sparse
}  // namespace attnkit
