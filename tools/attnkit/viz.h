#pragma once
// `attnkit viz`: draws which keys each query of a sequence mechanism sees, as a PNG picture.

#include "registry.h"

#include <torch/types.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace attnkit::cli {

/// What to draw and where.
struct VizOptions {
  MechanismConfig config;
  int64_t batch_size = 1;
  int64_t seq_len = 64;
  /// Seeds the parameters and the input.
  uint64_t seed = 0;
  /// Black for every visible key instead of grey levels by weight.
  bool binary = false;
  /// A 1-px grid between the cells (when a cell is at least 4 px).
  bool grid = false;
  /// The PNG file to write.
  std::string out;
};

/// The largest --seq viz accepts: the weights alone take batch * heads * seq^2 floats.
constexpr int64_t kMaxVizSeq = 4096;

/// The map the picture is drawn from, for queries [T] x keys [Tk].
struct AttentionMap {
  /// |mean over batch and heads of the attention weights|, float64 [T, Tk].
  torch::Tensor weight;
  /// Bool [T, Tk]: some head of some batch element attends to the key (non-zero weight, or
  /// selected by the mechanism's own aux fields where it has them).
  torch::Tensor visible;
};

/// Runs forward_with_aux (or the mechanism's sparse variant) on x and reduces it to a map.
/// Throws std::invalid_argument for a set-to-set mechanism or one without attention weights.
AttentionMap attention_map(const Mechanism& mechanism, const VizOptions& options);

/// The grey-level image of `map`: 0 = black. Cells are `cell` px square; with `grid` a 1-px line
/// of grey 160 runs between them and around the picture. Returns the pixels row by row.
std::vector<uint8_t> render(
    const AttentionMap& map, int64_t cell, bool binary, bool grid, int64_t& width, int64_t& height);

/// Writes an 8-bit PNG (libpng), greyscale (one byte per pixel) or RGB (three). Throws
/// std::runtime_error naming the file on failure.
void write_png(const std::string& path,
               int64_t width,
               int64_t height,
               const std::vector<uint8_t>& pixels,
               bool rgb = false);

/// `attnkit viz NAME`: draws the map of `name` into options.out and prints one summary line.
int run_viz(const std::string& name, const VizOptions& options, std::ostream& out);

}  // namespace attnkit::cli
