#pragma once
// Builds any sequence-to-sequence mechanism by name from a JSON object of its options, and
// describes every mechanism's options (names, types, defaults) for the Python package and the CLI.
// The API is string-based so that this header stays light: the JSON is parsed in src/factory.cpp.
//
// The JSON object's keys are the TORCH_ARG names of the mechanism's Options struct:
//   make_attention("gqa", R"({"dim": 64, "num_heads": 4, "num_kv_heads": 2, "causal": true})");
// Value forms, by catalogue type:
//   "int", "float", "bool"    a JSON number (an integer for "int") or true/false
//   "int?", "float?"          the same, or null for an unset std::optional
//   "string"                  an enum, as its lower-case name: "elu_plus_one", "relu"
//   "int[]"                   an array of integers: [0, 5]
//   "rope", "rope?"           an object with RopeOptions' fields, any subset of
//                             {"dim", "style": "half"|"interleaved", "channels": "first"|"last",
//                             "theta", "scaling": "none"|"linear"|"ntk"|"yarn", "factor",
//                             "beta_fast", "beta_slow", "original_max_position_embeddings"}
//                             (the rest keep their defaults); "rope?" also takes null (no RoPE)
//   "decay_gate"              {"type": "mamba", "normalizer", "dt_min", "dt_max",
//                             "dt_init_floor"} or {"type": "log_sigmoid", "normalizer"}; the
//                             fields left out keep their defaults
//   "attention"               a wrapped mechanism: {"type": "<name>", ...its options}, e.g.
//                             make_attention("gated", R"({"attn": {"type": "local", "dim": 32,
//                             "num_heads": 4}, "gate_hidden": 8})")

#include <attnkit/attention/attention.h>

#include <string>
#include <vector>

namespace attnkit {

/// One option of a mechanism.
struct OptionInfo {
  /// The TORCH_ARG name: "num_kv_heads".
  std::string name;
  /// "int", "bool", "float", "int?", "float?", "string", "int[]", "rope", "rope?", "decay_gate"
  /// or "attention" (see the top of this file); "?" means null is accepted (unset).
  std::string type;
  /// JSON text of the default, read from a default-constructed Options struct: "false", "0",
  /// "null", ...; empty for a required option.
  std::string default_json;
  /// A constructor argument of the Options struct (or of the wrapper's constructor).
  bool required = false;
};

/// A mechanism the factory can build, with its options.
struct MechanismInfo {
  /// Short name, as in the CLI's registry: "gqa".
  std::string name;
  /// "GroupedQueryAttention"
  std::string class_name;
  /// Required ones first, in constructor order, then the rest in declaration order.
  std::vector<OptionInfo> options;
};

/// Every sequence-to-sequence mechanism the factory can build, in the order of the CLI's registry
/// (the set-to-set modules, slot attention and the C-JEPA predictor, are not among them).
const std::vector<MechanismInfo>& mechanism_catalog();

/// Builds mechanism `name` (short name or class name, any case) from a JSON object text whose
/// keys are option names, e.g. {"dim": 64, "num_heads": 4, "num_kv_heads": 2, "causal": true}.
/// Raises c10::Error naming the mechanism, the option, the expected and the given value for: an
/// unknown mechanism (listing the valid names), invalid JSON, a missing required option, an
/// unknown option key (listing the valid keys), a value of the wrong JSON type; the mechanism's
/// own constructor then checks the values.
/// Example:
///   Attention attn = make_attention("gqa", R"({"dim": 64, "num_heads": 4, "num_kv_heads": 2})");
Attention make_attention(const std::string& name, const std::string& json_options);

/// The catalogue as JSON text: [{"name": ..., "class_name": ..., "options": [{"name": ...,
/// "type": ..., "default": <JSON value, null when required>, "required": ...}, ...]}, ...].
std::string mechanism_catalog_json();

}  // namespace attnkit
