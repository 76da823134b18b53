#pragma once
// The table of mechanisms the CLI knows: one entry per mechanism, with its paper and a factory
// that builds it from a handful of common ints. Adding a mechanism is one entry in registry.cpp.

#include <attnkit/attention/attention.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace attnkit::cli {

/// The shape knobs every mechanism is built from. A mechanism ignores the ones it has no use for
/// (MultiQueryAttention ignores num_kv_heads).
struct MechanismConfig {
  /// Model width of the input and output.
  int64_t dim = 256;
  /// Number of query heads.
  int64_t num_heads = 8;
  /// Number of key/value heads, for the mechanisms that group query heads.
  int64_t num_kv_heads = 2;
  /// Mask future keys (and allow decoding).
  bool causal = true;
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

/// One row of the registry.
struct Mechanism {
  /// Short name used on the command line: "gqa".
  std::string name;
  /// The class, without `Impl`: "GroupedQueryAttention".
  std::string class_name;
  /// One line saying what is different about it.
  std::string description;
  Paper paper;
  /// Builds a fresh module (parameters from the current torch seed).
  std::function<Attention(const MechanismConfig&)> build;
};

/// Every mechanism, in the order `list` and `tour` print them.
const std::vector<Mechanism>& mechanisms();

/// The mechanism called `name` (its short name or its class name, any case). Throws
/// std::invalid_argument listing the valid names when there is none.
const Mechanism& find_mechanism(const std::string& name);

}  // namespace attnkit::cli
