#include <attnkit/factory.h>

#include <attnkit/attention/alibi_attention.h>
#include <attnkit/attention/big_bird_attention.h>
#include <attnkit/attention/block_attention.h>
#include <attnkit/attention/combined_attention.h>
#include <attnkit/attention/compressed_sparse_attention.h>
#include <attnkit/attention/deepseek_sparse_attention.h>
#include <attnkit/attention/delta_attention.h>
#include <attnkit/attention/differential_attention.h>
#include <attnkit/attention/dilated_attention.h>
#include <attnkit/attention/gated_attention.h>
#include <attnkit/attention/gated_delta_net.h>
#include <attnkit/attention/grouped_query_attention.h>
#include <attnkit/attention/heavily_compressed_attention.h>
#include <attnkit/attention/linear_attention.h>
#include <attnkit/attention/local_attention.h>
#include <attnkit/attention/longformer_attention.h>
#include <attnkit/attention/lsh_attention.h>
#include <attnkit/attention/minimax_sparse_attention.h>
#include <attnkit/attention/multi_head_latent_attention.h>
#include <attnkit/attention/multi_query_attention.h>
#include <attnkit/attention/research_attention_module.h>
#include <attnkit/attention/standard_attention.h>
#include <attnkit/core/rope.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

// How the JSON maps onto the options (see also include/attnkit/factory.h):
// - Each key of a mechanism's JSON object is a TORCH_ARG name of its Options struct; the
//   constructor arguments are required, every other TORCH_ARG is optional and keeps the value of
//   the default-constructed struct when absent. The catalogue's defaults are read from such a
//   struct (built with placeholder required values), never typed here.
// - Nested option structs (RopeOptions, the GatedDeltaNet decay gate) are JSON objects with their
//   own TORCH_ARG names; the fields left out keep the nested struct's defaults. An unset
//   std::optional is null. Enums are their lower-case names, as their to_string gives them.
// - The decay gate, a std::variant, is an object whose "type" ("mamba" or "log_sigmoid") picks
//   the alternative: {"type": "log_sigmoid", "normalizer": 8}.
// - Wrappers take the wrapped mechanisms under their C++ constructor argument names, each a JSON
//   object {"type": <short or class name>, ...its options}: GatedAttention's "attn",
//   CombinedAttention's "attn_a" and "attn_b". Their own keys are GatedAttentionOptions' fields.
// - torch::Tensor TORCH_ARGs cannot be given as JSON; none of the sequence mechanisms' Options
//   structs has one today, and one added later fails to compile here (Codec has no Tensor case)
//   until it is skipped or given a form explicitly.

namespace attnkit {

namespace {

using json = nlohmann::ordered_json;  // keeps keys in declaration (and given) order

// Stands for the required constructor arguments of an Options struct until they are read.
constexpr int64_t kPlaceholder = 0;

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

std::string quoted(const std::string& text) {
  return "\"" + text + "\"";
}

/// Raises a c10::Error with `message`.
[[noreturn]] void raise(const std::string& message) {
  TORCH_CHECK(false, message);
}

// --- enums, by their lower-case names ------------------------------------------------------------

/// Which alternative of DecayGateOptions, for the decay gate's "type" key.
enum class DecayGateKind { kMamba, kLogSigmoid };

const char* to_string(DecayGateKind kind) {
  return kind == DecayGateKind::kMamba ? "mamba" : "log_sigmoid";
}

// Every value of each enum that occurs in an Options struct; the names come from to_string.
std::vector<RopeStyle> enum_values(RopeStyle) {
  return {RopeStyle::kHalf, RopeStyle::kInterleaved};
}
std::vector<RopeChannels> enum_values(RopeChannels) {
  return {RopeChannels::kFirst, RopeChannels::kLast};
}
std::vector<RopeScaling> enum_values(RopeScaling) {
  return {RopeScaling::kNone, RopeScaling::kLinear, RopeScaling::kNtk, RopeScaling::kYarn};
}
std::vector<LinearFeatureMap> enum_values(LinearFeatureMap) {
  return {LinearFeatureMap::kEluPlusOne, LinearFeatureMap::kRelu};
}
std::vector<DecayGateKind> enum_values(DecayGateKind) {
  return {DecayGateKind::kMamba, DecayGateKind::kLogSigmoid};
}

// --- the binder ----------------------------------------------------------------------------------

template <typename T>
struct Codec;  // How option type T maps to JSON; specialised below for every type in use.

/// Walks the options of one mechanism (or of one nested struct) in one of two modes: reading
/// them from a JSON object into the Options struct, with type checks, or describing them (names,
/// types, current values) for the catalogue. The per-mechanism functions below call it once per
/// option (REQ / OPT), so one list of lines serves both.
class Binder {
 public:
  /// Reads from `given` (a JSON object) for mechanism `owner`. Errors start with `context` (the
  /// path through the wrappers, "GatedAttention: option \"attn\": ") and the owner; option names
  /// get `prefix` (a nested struct's "rope.").
  static Binder reader(const json& given,
                       std::string owner,
                       std::string context,
                       std::string prefix = "") {
    Binder b(std::move(owner), std::move(context), std::move(prefix));
    b.given_ = &given;
    return b;
  }
  /// Describes the options it is shown, as they are.
  static Binder describer(std::string owner) { return Binder(std::move(owner), "", ""); }

  bool describing() const { return given_ == nullptr; }

  /// A constructor argument: reading, it must be present.
  template <typename T>
  void required(const char* name, T& field) {
    bind(name, field, /*required=*/true);
  }
  /// Any other option: reading, it keeps its value when absent.
  template <typename T>
  void optional(const char* name, T& field) {
    bind(name, field, /*required=*/false);
  }

  /// Reading: raises for every key of the object that no option bound.
  void finish() const {
    if (describing()) return;
    std::vector<std::string> unknown;
    for (const auto& item : given_->items()) {
      if (std::find(names_.begin(), names_.end(), item.key()) == names_.end()) {
        unknown.push_back(quoted(key(item.key())) + " (given " + item.value().dump() + ")");
      }
    }
    if (unknown.empty()) return;
    std::vector<std::string> valid;
    for (const std::string& name : names_) valid.push_back(key(name));
    fail(std::string(unknown.size() == 1 ? "unknown option " : "unknown options ") +
         join(unknown) + "; valid options: " + join(valid));
  }

  /// Reading: checks for unknown keys, then builds the module; describing: nothing.
  template <typename Holder, typename... Args>
  Attention build(Args&&... args) const {
    if (describing()) return Attention(nullptr);
    finish();
    try {
      return as_attention(Holder(std::forward<Args>(args)...));
    } catch (const c10::Error& e) {
      // A wrapped mechanism's own checks: say which wrapper option it came from.
      if (context_.empty()) throw;
      raise(context_ + e.what_without_backtrace());
    }
  }

  /// Raises "<context><owner>: <message>".
  [[noreturn]] void fail(const std::string& message) const {
    raise(context_ + owner_ + ": " + message);
  }
  /// Raises for option `name` holding `given` where `expected` ("a bool") was expected.
  [[noreturn]] void type_error(const std::string& name,
                               const std::string& expected,
                               const json& given) const {
    fail("option " + quoted(key(name)) + " expects " + expected + ", got " + given.dump());
  }

  /// A reader for the object under option `name` (a nested struct): same owner and context,
  /// names prefixed with "name.".
  Binder nested(const std::string& name, const json& value) const {
    return reader(value, owner_, context_, key(name) + ".");
  }
  /// The context of a mechanism nested under option `name` (a wrapper's "attn").
  std::string nested_context(const std::string& name) const {
    return context_ + owner_ + ": option " + quoted(key(name)) + ": ";
  }

  /// The option name as errors show it.
  std::string key(const std::string& name) const { return prefix_ + name; }
  /// Describing: the options seen, and their values as one JSON object.
  const std::vector<OptionInfo>& infos() const { return infos_; }
  const json& values() const { return values_; }

 private:
  Binder(std::string owner, std::string context, std::string prefix)
      : owner_(std::move(owner)), context_(std::move(context)), prefix_(std::move(prefix)) {}

  template <typename T>
  void bind(const char* name, T& field, bool required) {
    names_.emplace_back(name);
    if (describing()) {
      json value = required ? json(nullptr) : Codec<T>::to_json(field);
      infos_.push_back(OptionInfo{name, Codec<T>::kType, required ? "" : value.dump(), required});
      values_[name] = std::move(value);
      return;
    }
    const auto it = given_->find(name);
    if (it == given_->end()) {
      if (required) {
        fail("missing required option " + quoted(key(name)) + " (expects " +
             Codec<T>::expected() + ")");
      }
      return;
    }
    Codec<T>::read(*it, field, *this, name);
  }

  const json* given_ = nullptr;
  std::string owner_, context_, prefix_;
  std::vector<std::string> names_;   // every option bound so far, in order
  std::vector<OptionInfo> infos_;    // describing
  json values_ = json::object();     // describing
};

/// One option per line: REQ for a constructor argument, OPT for the rest. `opts.name()` is the
/// TORCH_ARG's non-const getter, a reference to the field.
#define REQ(binder, opts, name) (binder).required(#name, (opts).name())
#define OPT(binder, opts, name) (binder).optional(#name, (opts).name())

// --- codecs: catalogue type, expected form, JSON out, JSON in ------------------------------------

bool is_int(const json& v) {
  return v.is_number_integer() &&
         !(v.is_number_unsigned() &&
           v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
}

template <>
struct Codec<int64_t> {
  static constexpr const char* kType = "int";
  static std::string expected() { return "an int"; }
  static json to_json(int64_t value) { return value; }
  static void read(const json& v, int64_t& out, const Binder& b, const char* name) {
    if (!is_int(v)) b.type_error(name, expected(), v);
    out = v.get<int64_t>();
  }
};

template <>
struct Codec<double> {
  static constexpr const char* kType = "float";
  static std::string expected() { return "a number"; }
  static json to_json(double value) { return value; }
  static void read(const json& v, double& out, const Binder& b, const char* name) {
    if (!v.is_number()) b.type_error(name, expected(), v);  // ints too; never true/false
    out = v.get<double>();
  }
};

template <>
struct Codec<bool> {
  static constexpr const char* kType = "bool";
  static std::string expected() { return "a bool"; }
  static json to_json(bool value) { return value; }
  static void read(const json& v, bool& out, const Binder& b, const char* name) {
    if (!v.is_boolean()) b.type_error(name, expected(), v);
    out = v.get<bool>();
  }
};

template <>
struct Codec<std::optional<int64_t>> {
  static constexpr const char* kType = "int?";
  static std::string expected() { return "an int or null"; }
  static json to_json(const std::optional<int64_t>& value) {
    return value ? json(*value) : json(nullptr);
  }
  static void read(const json& v, std::optional<int64_t>& out, const Binder& b, const char* name) {
    if (v.is_null()) {
      out = std::nullopt;
      return;
    }
    if (!is_int(v)) b.type_error(name, expected(), v);
    out = v.get<int64_t>();
  }
};

template <>
struct Codec<std::optional<double>> {
  static constexpr const char* kType = "float?";
  static std::string expected() { return "a number or null"; }
  static json to_json(const std::optional<double>& value) {
    return value ? json(*value) : json(nullptr);
  }
  static void read(const json& v, std::optional<double>& out, const Binder& b, const char* name) {
    if (v.is_null()) {
      out = std::nullopt;
      return;
    }
    if (!v.is_number()) b.type_error(name, expected(), v);
    out = v.get<double>();
  }
};

template <>
struct Codec<std::vector<int64_t>> {
  static constexpr const char* kType = "int[]";
  static std::string expected() { return "an array of ints"; }
  static json to_json(const std::vector<int64_t>& value) { return value; }
  static void read(const json& v, std::vector<int64_t>& out, const Binder& b, const char* name) {
    if (!v.is_array() || !std::all_of(v.begin(), v.end(), is_int)) {
      b.type_error(name, expected(), v);
    }
    out = v.get<std::vector<int64_t>>();
  }
};

/// A JSON document held as text (ResearchAttentionModule's masker configuration): given inline
/// (an array or object), or as a string of JSON text.
template <>
struct Codec<std::string> {
  static constexpr const char* kType = "json";
  static std::string expected() { return "a JSON array or object (or its text)"; }
  static json to_json(const std::string& value) {
    json parsed = json::parse(value, nullptr, /*allow_exceptions=*/false);
    return parsed.is_discarded() ? json(value) : parsed;
  }
  static void read(const json& v, std::string& out, const Binder& b, const char* name) {
    if (v.is_string()) {
      out = v.get<std::string>();
    } else if (v.is_array() || v.is_object()) {
      out = v.dump();
    } else {
      b.type_error(name, expected(), v);
    }
  }
};

/// Enums: a string, one of the names to_string gives their values.
template <typename E>
  requires std::is_enum_v<E>
struct Codec<E> {
  static constexpr const char* kType = "string";
  static std::string expected() {
    std::vector<std::string> names;
    for (E value : enum_values(E{})) names.push_back(quoted(to_string(value)));
    return "one of " + join(names);
  }
  static json to_json(E value) { return to_string(value); }
  static void read(const json& v, E& out, const Binder& b, const char* name) {
    if (v.is_string()) {
      for (E value : enum_values(E{})) {
        if (v.get<std::string>() == to_string(value)) {
          out = value;
          return;
        }
      }
    }
    b.type_error(name, expected(), v);
  }
};

// The fields of the nested structs, in declaration order (defined below).
void rope_fields(Binder& b, RopeOptions& o);
void decay_gate_fields(Binder& b, DecayGateOptions& gate);

/// A nested struct as a JSON object: the fields its `fields` function binds.
template <typename T, void (*Fields)(Binder&, T&)>
struct StructCodec {
  static json to_json(const T& value) {
    Binder d = Binder::describer("");
    T copy = value;
    Fields(d, copy);
    return d.values();
  }
  static void read_object(const json& v, T& out, const Binder& b, const char* name) {
    Binder nested = b.nested(name, v);
    Fields(nested, out);
    nested.finish();
  }
};

template <>
struct Codec<RopeOptions> : StructCodec<RopeOptions, rope_fields> {
  static constexpr const char* kType = "rope";
  static std::string expected() { return "an object of RopeOptions fields"; }
  static void read(const json& v, RopeOptions& out, const Binder& b, const char* name) {
    if (!v.is_object()) b.type_error(name, expected(), v);
    read_object(v, out, b, name);
  }
};

template <>
struct Codec<std::optional<RopeOptions>> {
  static constexpr const char* kType = "rope?";
  static std::string expected() { return "an object of RopeOptions fields or null"; }
  static json to_json(const std::optional<RopeOptions>& value) {
    return value ? Codec<RopeOptions>::to_json(*value) : json(nullptr);
  }
  static void read(const json& v,
                   std::optional<RopeOptions>& out,
                   const Binder& b,
                   const char* name) {
    if (v.is_null()) {
      out = std::nullopt;
      return;
    }
    if (!v.is_object()) b.type_error(name, expected(), v);
    RopeOptions rope = out.value_or(RopeOptions());
    Codec<RopeOptions>::read_object(v, rope, b, name);
    out = rope;
  }
};

template <>
struct Codec<DecayGateOptions> : StructCodec<DecayGateOptions, decay_gate_fields> {
  static constexpr const char* kType = "decay_gate";
  static std::string expected() {
    return "an object {\"type\": \"mamba\" or \"log_sigmoid\", ...its fields}";
  }
  static void read(const json& v, DecayGateOptions& out, const Binder& b, const char* name) {
    if (!v.is_object()) b.type_error(name, expected(), v);
    read_object(v, out, b, name);
  }
};

Attention build(const std::string& name, const json& options, const std::string& context);

/// A wrapped mechanism: {"type": <name>, ...its options}.
template <>
struct Codec<Attention> {
  static constexpr const char* kType = "attention";
  static std::string expected() {
    return "a mechanism object {\"type\": <name>, ...its options}";
  }
  static json to_json(const Attention&) { return nullptr; }  // required: never described
  static void read(const json& v, Attention& out, const Binder& b, const char* name) {
    const auto type = v.is_object() ? v.find("type") : v.end();
    if (type == v.end() || !type->is_string()) b.type_error(name, expected(), v);
    json options = v;
    options.erase("type");
    out = build(type->get<std::string>(), options, b.nested_context(name));
  }
};

// --- nested structs ------------------------------------------------------------------------------

void rope_fields(Binder& b, RopeOptions& o) {
  OPT(b, o, dim);
  OPT(b, o, style);
  OPT(b, o, channels);
  OPT(b, o, theta);
  OPT(b, o, scaling);
  OPT(b, o, factor);
  OPT(b, o, beta_fast);
  OPT(b, o, beta_slow);
  OPT(b, o, original_max_position_embeddings);
}

// "type" picks the alternative; switching it starts from that alternative's defaults.
void decay_gate_fields(Binder& b, DecayGateOptions& gate) {
  DecayGateKind kind = std::holds_alternative<MambaDecayGateOptions>(gate)
                           ? DecayGateKind::kMamba
                           : DecayGateKind::kLogSigmoid;
  b.optional("type", kind);
  if (kind == DecayGateKind::kMamba) {
    if (!std::holds_alternative<MambaDecayGateOptions>(gate)) gate = MambaDecayGateOptions();
    auto& o = std::get<MambaDecayGateOptions>(gate);
    OPT(b, o, normalizer);
    OPT(b, o, dt_min);
    OPT(b, o, dt_max);
    OPT(b, o, dt_init_floor);
  } else {
    if (!std::holds_alternative<LogSigmoidDecayGateOptions>(gate)) {
      gate = LogSigmoidDecayGateOptions();
    }
    auto& o = std::get<LogSigmoidDecayGateOptions>(gate);
    OPT(b, o, normalizer);
  }
}

// --- the mechanisms, in the order of tools/attnkit/registry.cpp ----------------------------------

// StandardAttention and MultiQueryAttention share ProjectedAttentionOptions.
void projected_fields(Binder& b, ProjectedAttentionOptions& o) {
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, causal);
  OPT(b, o, dropout);
  OPT(b, o, temperature);
  OPT(b, o, bias);
  OPT(b, o, rope);
}

Attention make_standard(Binder& b) {
  StandardAttentionOptions o(kPlaceholder, kPlaceholder);
  projected_fields(b, o);
  return b.build<StandardAttention>(o);
}

Attention make_mqa(Binder& b) {
  MultiQueryAttentionOptions o(kPlaceholder, kPlaceholder);
  projected_fields(b, o);
  return b.build<MultiQueryAttention>(o);
}

Attention make_gqa(Binder& b) {
  GroupedQueryAttentionOptions o(kPlaceholder, kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  REQ(b, o, num_kv_heads);
  OPT(b, o, head_dim);
  OPT(b, o, causal);
  OPT(b, o, dropout);
  OPT(b, o, temperature);
  OPT(b, o, bias);
  OPT(b, o, qk_norm_eps);
  OPT(b, o, qk_norm_zero_centered);
  OPT(b, o, rope);
  OPT(b, o, output_gate);
  OPT(b, o, window_left);
  OPT(b, o, window_right);
  OPT(b, o, sinks);
  return b.build<GroupedQueryAttention>(o);
}

Attention make_mla(Binder& b) {
  MultiHeadLatentAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, q_lora_rank);
  OPT(b, o, kv_lora_rank);
  OPT(b, o, qk_nope_head_dim);
  OPT(b, o, qk_rope_head_dim);
  OPT(b, o, v_head_dim);
  OPT(b, o, norm_eps);
  OPT(b, o, causal);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  OPT(b, o, rope);
  return b.build<MultiHeadLatentAttention>(o);
}

Attention make_bigbird(Binder& b) {
  BigBirdAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, block_size);
  OPT(b, o, num_window_blocks);
  OPT(b, o, num_random_blocks);
  OPT(b, o, num_global_blocks);
  OPT(b, o, causal);
  OPT(b, o, seed);
  OPT(b, o, bias);
  return b.build<BigBirdAttention>(o);
}

Attention make_dsa(Binder& b) {
  DeepSeekSparseAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, top_k);
  OPT(b, o, num_index_heads);
  OPT(b, o, index_head_dim);
  OPT(b, o, causal);
  OPT(b, o, bias);
  OPT(b, o, detach_index);
  return b.build<DeepSeekSparseAttention>(o);
}

Attention make_minimax(Binder& b) {
  MiniMaxSparseAttentionOptions o(kPlaceholder, kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  REQ(b, o, num_kv_groups);
  OPT(b, o, block_size);
  OPT(b, o, top_k);
  OPT(b, o, index_dim);
  OPT(b, o, rope_dim);
  OPT(b, o, partial_rope);
  OPT(b, o, causal);
  OPT(b, o, use_rope);
  OPT(b, o, rope_theta);
  OPT(b, o, force_current_block);
  OPT(b, o, bias);
  OPT(b, o, qk_norm);
  OPT(b, o, qk_norm_eps);
  OPT(b, o, detach_index);
  return b.build<MiniMaxSparseAttention>(o);
}

Attention make_hca(Binder& b) {
  HeavilyCompressedAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, compression_rate);
  OPT(b, o, kv_dim);
  OPT(b, o, q_lora_rank);
  OPT(b, o, num_groups);
  OPT(b, o, window);
  OPT(b, o, bias);
  OPT(b, o, norm_eps);
  OPT(b, o, rope);
  return b.build<HeavilyCompressedAttention>(o);
}

Attention make_csa(Binder& b) {
  CompressedSparseAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, compression_rate);
  OPT(b, o, top_k);
  OPT(b, o, kv_dim);
  OPT(b, o, q_lora_rank);
  OPT(b, o, num_index_heads);
  OPT(b, o, index_dim);
  OPT(b, o, num_groups);
  OPT(b, o, window);
  OPT(b, o, bias);
  OPT(b, o, norm_eps);
  OPT(b, o, rope);
  return b.build<CompressedSparseAttention>(o);
}

Attention make_delta(Binder& b) {
  DeltaAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, window);
  OPT(b, o, sink);
  OPT(b, o, stride);
  OPT(b, o, bias);
  return b.build<DeltaAttention>(o);
}

Attention make_diff(Binder& b) {
  DifferentialAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, depth);
  OPT(b, o, causal);
  OPT(b, o, bias);
  return b.build<DifferentialAttention>(o);
}

Attention make_local(Binder& b) {
  LocalAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, window_size);
  OPT(b, o, causal);
  OPT(b, o, temperature);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  OPT(b, o, rope);
  return b.build<LocalAttention>(o);
}

Attention make_dilated(Binder& b) {
  DilatedAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, dilation_rate);
  OPT(b, o, temperature);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  OPT(b, o, rope);
  return b.build<DilatedAttention>(o);
}

Attention make_block(Binder& b) {
  BlockAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, block_size);
  OPT(b, o, overlap);
  OPT(b, o, temperature);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  OPT(b, o, rope);
  return b.build<BlockAttention>(o);
}

Attention make_longformer(Binder& b) {
  LongformerAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, window_size);
  OPT(b, o, global_positions);
  OPT(b, o, temperature);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  OPT(b, o, rope);
  return b.build<LongformerAttention>(o);
}

Attention make_alibi(Binder& b) {
  ALiBiAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, causal);
  OPT(b, o, temperature);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  return b.build<ALiBiAttention>(o);
}

Attention make_lsh(Binder& b) {
  LSHAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, bucket_size);
  OPT(b, o, num_hashes);
  OPT(b, o, seed);
  OPT(b, o, temperature);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  OPT(b, o, rope);
  return b.build<LSHAttention>(o);
}

Attention make_linear(Binder& b) {
  LinearAttentionOptions o(kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  OPT(b, o, feature_dim);
  OPT(b, o, feature_map);
  OPT(b, o, causal);
  OPT(b, o, eps);
  OPT(b, o, chunk_size);
  OPT(b, o, bias);
  OPT(b, o, rope);
  return b.build<LinearAttention>(o);
}

// The gate network's options, shared by GatedAttention and CombinedAttention.
void gate_fields(Binder& b, GatedAttentionOptions& o) {
  OPT(b, o, gate_hidden);
  OPT(b, o, gate_bias);
  OPT(b, o, dropout);
  OPT(b, o, residual_proj);
}

// {"attn": {"type": "gqa", ...}, "gate_hidden": ...}
Attention make_gated(Binder& b) {
  Attention attn{nullptr};
  b.required("attn", attn);
  GatedAttentionOptions o;
  gate_fields(b, o);
  return b.build<GatedAttention>(attn, o);
}

// {"attn_a": {"type": "local", ...}, "attn_b": {"type": "linear", ...}, "gate_hidden": ...}
Attention make_combined(Binder& b) {
  Attention attn_a{nullptr}, attn_b{nullptr};
  b.required("attn_a", attn_a);
  b.required("attn_b", attn_b);
  CombinedAttentionOptions o;
  gate_fields(b, o);
  return b.build<CombinedAttention>(attn_a, attn_b, o);
}

Attention make_gdn(Binder& b) {
  GatedDeltaNetOptions o(kPlaceholder, kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_qk_heads);
  REQ(b, o, num_v_heads);
  OPT(b, o, head_qk_dim);
  OPT(b, o, head_v_dim);
  OPT(b, o, norm_eps);
  OPT(b, o, conv_size);
  OPT(b, o, decay_gate);
  OPT(b, o, use_qk_l2norm);
  return b.build<GatedDeltaNet>(o);
}

Attention make_research(Binder& b) {
  ResearchAttentionModuleOptions o(kPlaceholder, kPlaceholder, kPlaceholder);
  REQ(b, o, dim);
  REQ(b, o, num_heads);
  REQ(b, o, num_kv_heads);
  OPT(b, o, maskers);
  OPT(b, o, head_dim);
  OPT(b, o, causal);
  OPT(b, o, dropout);
  OPT(b, o, bias);
  OPT(b, o, layer_idx);
  return b.build<ResearchAttentionModule>(o);
}

#undef REQ
#undef OPT

// --- the table -----------------------------------------------------------------------------------

struct Entry {
  const char* name;
  const char* class_name;
  Attention (*make)(Binder&);
};

/// The sequence mechanisms of tools/attnkit/registry.cpp, in its order (slot and cjepa are
/// set-to-set).
const std::vector<Entry>& entries() {
  static const std::vector<Entry> table = {
      {"standard", "StandardAttention", make_standard},
      {"mqa", "MultiQueryAttention", make_mqa},
      {"gqa", "GroupedQueryAttention", make_gqa},
      {"mla", "MultiHeadLatentAttention", make_mla},
      {"bigbird", "BigBirdAttention", make_bigbird},
      {"dsa", "DeepSeekSparseAttention", make_dsa},
      {"minimax", "MiniMaxSparseAttention", make_minimax},
      {"hca", "HeavilyCompressedAttention", make_hca},
      {"csa", "CompressedSparseAttention", make_csa},
      {"delta", "DeltaAttention", make_delta},
      {"diff", "DifferentialAttention", make_diff},
      {"local", "LocalAttention", make_local},
      {"dilated", "DilatedAttention", make_dilated},
      {"block", "BlockAttention", make_block},
      {"longformer", "LongformerAttention", make_longformer},
      {"alibi", "ALiBiAttention", make_alibi},
      {"lsh", "LSHAttention", make_lsh},
      {"linear", "LinearAttention", make_linear},
      {"gated", "GatedAttention", make_gated},
      {"combined", "CombinedAttention", make_combined},
      {"gdn", "GatedDeltaNet", make_gdn},
      {"research", "ResearchAttentionModule", make_research},
  };
  return table;
}

/// The entry named `name` (short or class name, any case); `context` prefixes the error.
const Entry& find_entry(const std::string& name, const std::string& context) {
  const std::string key = lower(name);
  for (const Entry& e : entries()) {
    if (key == lower(e.name) || key == lower(e.class_name)) return e;
  }
  std::vector<std::string> valid;
  for (const Entry& e : entries()) valid.emplace_back(e.name);
  raise(context + "make_attention: unknown mechanism " + quoted(name) +
        "; valid names (or their class names, any case): " + join(valid));
}

Attention build(const std::string& name, const json& options, const std::string& context) {
  const Entry& e = find_entry(name, context);
  Binder b = Binder::reader(options, e.class_name, context);
  return e.make(b);
}

}  // namespace

const std::vector<MechanismInfo>& mechanism_catalog() {
  static const std::vector<MechanismInfo> catalog = [] {
    std::vector<MechanismInfo> out;
    for (const Entry& e : entries()) {
      Binder b = Binder::describer(e.class_name);
      e.make(b);
      out.push_back(MechanismInfo{e.name, e.class_name, b.infos()});
    }
    return out;
  }();
  return catalog;
}

Attention make_attention(const std::string& name, const std::string& json_options) {
  const Entry& e = find_entry(name, "");
  json options;
  try {
    options = json::parse(json_options);
  } catch (const json::parse_error& error) {
    TORCH_CHECK(false, e.class_name, ": invalid JSON options ", json_options, " (", error.what(),
                ")");
  }
  TORCH_CHECK(options.is_object(), e.class_name,
              ": options must be a JSON object of option names to values, got ", options.dump());
  return build(e.name, options, "");
}

std::string mechanism_catalog_json() {
  json out = json::array();
  for (const MechanismInfo& m : mechanism_catalog()) {
    json options = json::array();
    for (const OptionInfo& o : m.options) {
      options.push_back({{"name", o.name},
                         {"type", o.type},
                         {"default", o.required ? json(nullptr) : json::parse(o.default_json)},
                         {"required", o.required}});
    }
    out.push_back({{"name", m.name}, {"class_name", m.class_name}, {"options", options}});
  }
  return out.dump();
}

}  // namespace attnkit
