#pragma once
// The table of mechanisms the CLI knows: one entry per mechanism, with its paper and a factory
// that builds it from a handful of common ints. Adding a mechanism is one entry in registry.cpp.
//
// Two kinds of entries: sequence-to-sequence mechanisms (x [B, T, dim] -> [B, T, dim], built as an
// attnkit::Attention) and set-to-set modules (slot attention, the C-JEPA predictor), which have
// their own input and output shapes and no decoding.

#include <attnkit/attention/attention.h>

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace attnkit::cli {

/// The shape knobs every mechanism is built from. A mechanism ignores the ones it has no use for
/// (MultiQueryAttention ignores num_kv_heads; the always-causal ones ignore causal).
struct MechanismConfig {
  /// Model width of the input and output.
  int64_t dim = 256;
  /// Number of query heads.
  int64_t num_heads = 8;
  /// Number of key/value heads, for the mechanisms that group query heads.
  int64_t num_kv_heads = 2;
  /// Mask future keys (and allow decoding).
  bool causal = true;
  /// The sequence length the module will be run on: set-to-set modules size their input from it.
  int64_t seq_len = 256;
};

/// The paper a mechanism comes from.
struct Paper {
  /// "Ainslie et al."
  std::string authors;
  int year = 0;
  /// "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints"
  std::string title;
};

/// "Ainslie et al., 2023, \"GQA: ...\""
std::string to_string(const Paper& paper);

/// A set-to-set module ready to run: the module itself and how to call it.
struct SetModule {
  /// The module (parameters, pretty_print, to(dtype)).
  std::shared_ptr<torch::nn::Module> module;
  /// Name and shape of one input without the batch dimension: "inputs", {N, dim}.
  std::string input_name;
  std::vector<int64_t> input_shape;
  /// Name of the output: "slots".
  std::string output_name;
  /// input [B, input_shape...] -> output.
  std::function<torch::Tensor(const torch::Tensor&)> forward;
};

/// Builds a sequence-to-sequence mechanism (parameters from the current torch seed).
using SequenceFactory = std::function<Attention(const MechanismConfig&)>;
/// Builds a set-to-set module sized for config.seq_len (parameters from the current torch seed).
using SetFactory = std::function<SetModule(const MechanismConfig&)>;

/// One row of the registry.
struct Mechanism {
  /// Short name used on the command line: "gqa".
  std::string name;
  /// The class, without `Impl`: "GroupedQueryAttention".
  std::string class_name;
  /// One line saying what is different about it.
  std::string description;
  Paper paper;
  /// The factory; its type says the kind of mechanism.
  std::variant<SequenceFactory, SetFactory> build;

  /// Whether this is a set-to-set module (SetFactory) rather than a sequence mechanism.
  bool set_to_set() const { return std::holds_alternative<SetFactory>(build); }
  /// Builds a sequence-to-sequence mechanism; throws std::invalid_argument for a set-to-set one.
  Attention build_sequence(const MechanismConfig& config) const;
  /// Builds a set-to-set module; throws std::invalid_argument for a sequence mechanism.
  SetModule build_set(const MechanismConfig& config) const;
};

/// Every mechanism, in the order `list` and `tour` print them.
const std::vector<Mechanism>& mechanisms();

/// The mechanism called `name` (its short name or its class name, any case). Throws
/// std::invalid_argument listing the valid names when there is none.
const Mechanism& find_mechanism(const std::string& name);

}  // namespace attnkit::cli
