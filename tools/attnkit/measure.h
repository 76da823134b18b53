#pragma once
// Builds one mechanism and measures it the way `attnkit run` and `attnkit tour` report it.

#include "registry.h"

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace attnkit::cli {

/// What to build and how to time it.
struct MeasureOptions {
  MechanismConfig config;
  int64_t batch_size = 2;
  int64_t seq_len = 256;
  torch::Dtype dtype = torch::kFloat32;
  /// Timed repetitions of forward and of backward (after one untimed warm-up each).
  int repeats = 5;
  /// Seeds the parameters and the inputs, so every mechanism sees the same x.
  uint64_t seed = 0;
};

/// The numbers one mechanism reports.
struct Measurement {
  /// The module's pretty_print: every option.
  std::string module_text;
  /// What the input and output are called: empty for sequence mechanisms (x and y), "inputs" and
  /// "slots" for slot attention, ...
  std::string input_name, output_name;
  std::vector<int64_t> input_shape;
  std::vector<int64_t> output_shape;
  int64_t num_parameters = 0;
  /// Median over the repeats of one forward without autograd.
  double forward_ms = 0;
  /// Median over the repeats of `backward()` alone, after a forward that records the graph
  /// (gradients of the parameters and of x).
  double backward_ms = 0;
  /// A set-to-set module (never decodes).
  bool set_to_set = false;
  bool supports_decoding = false;
  /// DecodeState::bytes() / length() after prefilling seq_len - 1 tokens of one sequence and
  /// decoding one more; -1 without decoding.
  int64_t kv_bytes_per_token = -1;
  /// Names of the decode state's entries ("k", "v", ...).
  std::vector<std::string> state_entries;
  /// max |y_decode - y_full| for the last token, against a full causal forward; -1 without
  /// decoding.
  double decode_max_abs_diff = -1;
};

/// Builds `mechanism` from `options.config` and measures it. Throws whatever the mechanism
/// throws (c10::Error for a bad shape).
Measurement measure(const Mechanism& mechanism, const MeasureOptions& options);

/// "float32" / "float64"; throws std::invalid_argument for anything else.
torch::Dtype parse_dtype(const std::string& name);
std::string dtype_name(torch::Dtype dtype);

}  // namespace attnkit::cli
