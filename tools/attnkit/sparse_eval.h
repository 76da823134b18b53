#pragma once
// `attnkit sparse-eval`: how far each sparse-attention configuration (a JSON list of maskers, see
// include/attnkit/sparse/) lands from dense attention, over a range of key lengths: the mask's
// density, the relative error of the output, and the time of both; drawn as an error-versus-
// density PNG. Python's attnkit.sparse.sparse_eval computes the same rows.

#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace attnkit::cli {

/// What to evaluate, on which data.
struct SparseEvalOptions {
  /// Each: a JSON array of masker objects (starts with '['), or the path of a file holding one.
  /// Empty: the two default configurations (`kDefaultSparseConfigs`).
  std::vector<std::string> maskers;
  /// Key lengths Tk. Empty: 1024, 4096, 16384 on random data; the file's Tk with `qkv`.
  std::vector<int64_t> lengths;
  /// The random data's shape: q [batch, heads, queries, head_dim], k/v [batch, kv_heads, Tk,
  /// head_dim]. Unused with `qkv`.
  int64_t queries = 1;
  int64_t batch = 1;
  int64_t heads = 8;
  int64_t kv_heads = 2;
  int64_t head_dim = 64;
  /// A torch.save'd dict {"q": [B, H, Tq, D], "k": [B, Hkv, Tk, D], "v": [B, Hkv, Tk, Dv]}.
  std::string qkv;
  /// The PNG file to draw error versus density into (none when empty).
  std::string png;
  /// Timed repetitions of each call; the median is reported.
  int repeats = 3;
  /// Seeds the random data (torch::manual_seed(seed)) and, before every sparse call, the
  /// sampling maskers (torch::manual_seed(seed + 1)).
  uint64_t seed = 0;
};

/// The configurations evaluated when none is given: sink 128 + local 128 + oracle top-k 10%, and
/// sink 128 + local 128 + random sampling 10%.
extern const std::vector<std::string> kDefaultSparseConfigs;

/// One (configuration, length) result.
struct SparseEvalRow {
  size_t config = 0;
  int64_t length = 0;
  /// Mask::density() of the mask the maskers built: the kept fraction of the (query, key) pairs;
  /// 1 when the mask is EMPTY (`empty_mask`), since the attention then runs dense.
  double density = 0.0;
  /// Whether the maskers chose no key at all (an EMPTY mask: plain dense attention).
  bool empty_mask = false;
  /// ||out_sparse - out_dense||_F / ||out_dense||_F, computed in float64.
  double rel_error = 0.0;
  /// Median wall time of ResearchAttention::custom_attention (masks and attention).
  double sparse_ms = 0.0;
  /// Median wall time of sparse::dense_attention at this length (shared by the configurations).
  double dense_ms = 0.0;
};

/// The JSON text of a --maskers value: the value itself when it starts with '[' (after leading
/// white space), otherwise the contents of the file it names. Throws std::invalid_argument when
/// the file cannot be read.
std::string masker_config_text(const std::string& value);

/// The evaluation data: q [B, H, Tq, D], k [B, Hkv, Tk_max, D], v [B, Hkv, Tk_max, Dv], float32
/// (float64 kept). Each length L evaluates the prefixes k[:, :, :L], v[:, :, :L] with every query
/// (queries aligned to the end of the prefix, as in decoding).
struct SparseEvalData {
  torch::Tensor q, k, v;
  std::vector<int64_t> lengths;
  /// One line that says where the data came from and its shapes.
  std::string summary;
};

/// Random data (seeded) or the --qkv file, and the lengths to evaluate. Throws
/// std::invalid_argument for a bad file, shapes or lengths.
SparseEvalData sparse_eval_data(const SparseEvalOptions& options);

/// Runs every configuration (JSON arrays) at every length: rows by configuration, then length.
std::vector<SparseEvalRow> sparse_eval(const std::vector<std::string>& configs,
                                       const SparseEvalData& data,
                                       int repeats,
                                       uint64_t seed);

/// An RGB colour and its name, as the plot and the legend show it.
struct PlotColour {
  const char* name;
  uint8_t r, g, b;
};
/// The colour of configuration `index` (a fixed palette, repeated when there are more).
PlotColour plot_colour(size_t index);

/// Draws error (y) versus density (x), one polyline per configuration in length order, as RGB
/// pixels row by row. `log_y` tells whether the y axis came out as log10.
std::vector<uint8_t> plot_sparse_eval(const std::vector<SparseEvalRow>& rows,
                                      size_t num_configs,
                                      int64_t width,
                                      int64_t height,
                                      bool& log_y);

/// `attnkit sparse-eval`: prints the legend and the table, writes the PNG when asked.
int run_sparse_eval(const SparseEvalOptions& options, std::ostream& out);

}  // namespace attnkit::cli
