#pragma once
// The sampling maskers: random sampling, MagicPig (LSH sampling) and adaptive sampling
// (vAttention). Each adds keys with a weight p in (0, 1], the probability with which the key was
// sampled, so that the attention counts it 1 / p times (Horvitz-Thompson). A research attention
// holds at most one of them. Their draws use torch's global generator (torch::randint), so
// torch::manual_seed makes them reproducible.

#include <attnkit/sparse/masker.h>

#include <torch/arg.h>

#include <cstdint>
#include <string>

namespace attnkit {
namespace sparse {

// ---- helpers ------------------------------------------------------------------------------

/// sparse-attention-hub's create_sampling_mask_with_per_head_budget: row r of a [B, H, Tq, k_len]
/// mask gets budgets[r] columns drawn uniformly with replacement from [start, end)
/// (torch::randint, one draw of sum(budgets) values), each of weight probability[r]. INDEX form,
/// ptr = [0, cumsum(budgets)], a column drawn twice kept as two entries (as upstream).
///   budgets: [B, H, Tq, 1] integer >= 0; probability: [B, H, Tq, 1] floating;
///   0 <= start < end <= k_len (unchecked when every budget is 0).
Mask sampling_mask_with_budget(const torch::Tensor& budgets,
                               const torch::Tensor& probability,
                               int64_t k_len,
                               int64_t start,
                               int64_t end,
                               torch::Dtype dtype = torch::kFloat);


// ---- random sampling ----------------------------------------------------------------------

/// Options of `RandomSamplingMasker`.
struct RandomSamplingMaskerOptions {
  explicit RandomSamplingMaskerOptions(double sampling_rate) : sampling_rate_(sampling_rate) {}
  /// Fraction of the keys drawn per query, in (0, 1].
  TORCH_ARG(double, sampling_rate);
};

/// Random sampling: each query draws n = int(sampling_rate * Tk) keys uniformly from [0, Tk),
/// with replacement and ignoring the previous mask, each of weight sampling_rate; the draw is
/// clamp-merged into the previous mask (a drawn key already active stays at 1). Never FULL
/// itself; when n = 0 nothing is drawn and the previous mask is returned. INDEX form (a key
/// drawn twice kept once) unless the previous mask is DENSE.
/// JSON: {"type": "random_sampling", "sampling_rate": 0.1}
class RandomSamplingMasker : public Masker {
 public:
  explicit RandomSamplingMasker(RandomSamplingMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "random_sampling"; }
  MaskerKind kind() const override { return MaskerKind::kSampling; }
  const RandomSamplingMaskerOptions& options() const { return options_; }

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  RandomSamplingMaskerOptions options_;
};

// ---- MagicPig -----------------------------------------------------------------------------

/// Options of `MagicPigMasker`.
struct MagicPigMaskerOptions {
  MagicPigMaskerOptions(int64_t lsh_l, int64_t lsh_k) : lsh_l_(lsh_l), lsh_k_(lsh_k) {}
  /// Number of LSH tables (> 0).
  TORCH_ARG(int64_t, lsh_l);
  /// Bits per table (> 0; <= 64 with "int64" packing).
  TORCH_ARG(int64_t, lsh_k);
  /// Subtract the keys' mean (cached per layer at the first call) from keys and queries.
  TORCH_ARG(bool, center) = true;
  /// How signatures are compared: "int64" (each table's bits packed into one integer) or
  /// "float32" (+-1 signs, a table matches when their products sum to lsh_k). Same result.
  TORCH_ARG(std::string, packing) = "int64";
  /// The projections of layer l are drawn from a generator seeded seed + l.
  TORCH_ARG(int64_t, seed) = 42;
};

/// MagicPig: LSH sampling for maximum inner product search. With K = lsh_k, L = lsh_l, and the
/// keys repeated to H heads (and centred by their cached mean when `center`):
///   q^ = [q / (|q| + 1e-8), 0],  k^ = [k / M, sqrt(M^2 - |k|^2) / M],  M = max |k| over the
///   whole keys tensor (Neyshabur & Srebro's transform);
///   p = 1 - (1 - (1 - theta / pi)^K)^L,  theta = arccos(cos(q^, k^)) (the collision probability);
///   signatures = the signs of x^ . R, R ~ N(0, 1) of [D + 1, L * K], one per layer;
/// a key matches a query when in some table all K bits agree, and the masker adds the DENSE
/// mask match * p (clamp-merged into the previous mask, so a matched key counts 1 / (p + 1e-6)
/// times). Never FULL itself. Needs layer_idx; caches per layer in the MaskerState the key mean
/// (kKeyMean), the projections (kProjections) and the key signatures (kKeySignatures, extended
/// with the new keys when Tk grows). Computed in float32 (float64 for double inputs).
/// JSON: {"type": "magic_pig", "lsh_l": 32, "lsh_k": 8, "center": true, "packing": "int64",
///        "seed": 42}
class MagicPigMasker : public Masker {
 public:
  /// MaskerState keys of the per-layer caches.
  static constexpr const char* kKeyMean = "magic_pig.key_mean";            // [B, H, 1, D]
  static constexpr const char* kProjections = "magic_pig.projections";     // [D + 1, L * K]
  static constexpr const char* kKeySignatures = "magic_pig.key_signatures";  // [B, H, Tk, *]

  explicit MagicPigMasker(MagicPigMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "magic_pig"; }
  MaskerKind kind() const override { return MaskerKind::kSampling; }
  const MagicPigMaskerOptions& options() const { return options_; }

  // The steps of `compute`, public for tests and analysis.

  /// The transformed vectors of the MIPS reduction.
  struct MipsVectors {
    torch::Tensor keys;     // [B, H, Tk, D + 1]
    torch::Tensor queries;  // [B, H, Tq, D + 1]
  };
  /// keys [B, H, Tk, D], queries [B, H, Tq, D] -> k^, q^ as above. When every key is zero
  /// (M = 0, e.g. one centred key) M is taken as 1, giving k^ = [0, 1] instead of NaN.
  static MipsVectors transform_for_mips(const torch::Tensor& keys, const torch::Tensor& queries);
  /// The collision probability p [B, H, Tq, Tk] of transformed vectors.
  torch::Tensor collision_probability(const MipsVectors& x) const;
  /// The projections of `layer`: N(0, 1) [dim, L * K] from a CPU generator seeded seed + layer.
  torch::Tensor projection(int64_t layer, int64_t dim, torch::Dtype dtype) const;
  /// Signatures of vectors [B, H, T, D + 1]: int64 [B, H, T, L] (table t's bit j, sign > 0,
  /// weighted 2^j) or float32 [B, H, T, L * K] signs (-1, 0, 1), per `packing`.
  torch::Tensor signatures(const torch::Tensor& vectors, const torch::Tensor& projection) const;
  /// Whether some table matches: bool [B, H, Tq, Tk] from key and query signatures.
  torch::Tensor matches(const torch::Tensor& key_signatures,
                        const torch::Tensor& query_signatures) const;

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  torch::Tensor cached_key_mean(const MaskerInputs& in, const torch::Tensor& keys) const;
  torch::Tensor cached_projection(const MaskerInputs& in, int64_t dim, torch::Dtype dtype) const;
  torch::Tensor cached_key_signatures(const MaskerInputs& in,
                                      const torch::Tensor& keys_hat,
                                      const torch::Tensor& projection) const;

  MagicPigMaskerOptions options_;
};

// ---- adaptive sampling --------------------------------------------------------------------

/// Options of `AdaptiveSamplingMasker`.
struct AdaptiveSamplingMaskerOptions {
  AdaptiveSamplingMaskerOptions(MaskerSize base_rate_sampling,
                                double epsilon,
                                double delta,
                                MaskerSize init_offset,
                                MaskerSize local_offset)
      : base_rate_sampling_(base_rate_sampling),
        epsilon_(epsilon),
        delta_(delta),
        init_offset_(init_offset),
        local_offset_(local_offset) {}
  /// Base sample per query: a fraction in [0, 1) of the sampling range, or a count >= 0.
  /// 0 turns the masker off.
  TORCH_ARG(MaskerSize, base_rate_sampling);
  /// Relative error bound of the softmax denominator, in (0, 1).
  TORCH_ARG(double, epsilon);
  /// Probability of exceeding it, in (0, 1).
  TORCH_ARG(double, delta);
  /// Keys skipped at the start (the sink): a count >= 0 or a fraction in [0, 1] of Tk.
  TORCH_ARG(MaskerSize, init_offset);
  /// Keys skipped at the end (the local window): a count >= 0 or a fraction in [0, 1] of Tk.
  TORCH_ARG(MaskerSize, local_offset);
};

/// Adaptive sampling (vAttention): samples keys from [start, end) with a per-query budget sized
/// so that the estimated softmax denominator is within epsilon (relative) with probability
/// 1 - delta. With E = exp(s - max s), s = q.k * scaling + attention_mask, R = end - start:
///   1. a base sample of n_b keys per query (randint in [start, end)) estimates the standard
///      deviation sigma of E over the range (unbiased, at least 1e-8) and, with weight n_b / R,
///      the sampled part of the denominator: den = row_sum_inverse(E, previous) + that part;
///   2. budget = clamp((Phi^-1(1 - delta) * sigma * R / max(epsilon * den, 1e-8))^2, 1, R),
///      truncated, then clamped to [n_b, R];
///   3. budget keys are drawn with replacement from [start, end) with weight budget / R
///      (`sampling_mask_with_budget`), and only this draw is clamp-merged into previous.
/// Returns the previous mask when base_rate_sampling is 0, FULL when R < 2. A query whose keys
/// are all masked (-inf) gets E = 0 rather than NaN. INDEX form (a key drawn twice kept once)
/// unless the previous mask is DENSE.
/// JSON: {"type": "adaptive_sampling", "base_rate_sampling": 0.05, "epsilon": 0.25,
///        "delta": 0.25, "init_offset": 128, "local_offset": 128}
class AdaptiveSamplingMasker : public Masker {
 public:
  explicit AdaptiveSamplingMasker(AdaptiveSamplingMaskerOptions options);
  static MaskerPtr from_config(const MaskerConfig& config);
  std::string type() const override { return "adaptive_sampling"; }
  MaskerKind kind() const override { return MaskerKind::kSampling; }
  const AdaptiveSamplingMaskerOptions& options() const { return options_; }

  // The steps of `compute`, public for tests and analysis.

  /// The keys sampled from: [start, end), size = end - start (may be < 2, then FULL).
  struct SamplingRange {
    int64_t start;
    int64_t end;
    int64_t size;
  };
  /// start = init_offset resolved on Tk, end = Tk - local_offset resolved on Tk.
  SamplingRange sampling_range(int64_t k_len) const;
  /// n_b = max(2, base_rate_sampling resolved on the range size).
  int64_t base_sample_count(int64_t range_size) const;
  /// Phi^-1(1 - delta), the standard normal quantile.
  double delta_ppf() const { return delta_ppf_; }
  /// Step 2 before the clamp to [n_b, R]: int64 budgets of the shape of sigma and den.
  torch::Tensor adaptive_budget(const torch::Tensor& sigma,
                                const torch::Tensor& denominator,
                                int64_t range_size) const;
  /// E = exp(s - max s) [B, H, Tq, Tk], float32 (float64 for double inputs).
  static torch::Tensor exp_scores(const MaskerInputs& in);

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override;

 private:
  AdaptiveSamplingMaskerOptions options_;
  double delta_ppf_;
};

}  // namespace sparse
}  // namespace attnkit
