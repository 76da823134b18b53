#include <attnkit/factory.h>

#include <attnkit/attention/combined_attention.h>
#include <attnkit/attention/gated_attention.h>
#include <attnkit/attention/gated_delta_net.h>
#include <attnkit/attention/grouped_query_attention.h>
#include <attnkit/attention/linear_attention.h>
#include <attnkit/attention/longformer_attention.h>
#include <attnkit/attention/multi_head_latent_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "support/contract.h"

#include <map>
#include <memory>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace attnkit {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

constexpr int64_t kDim = 32;

// GQA with the required options only: {"dim": 32, "num_heads": 4, "num_kv_heads": 2} plus `extra`.
std::string gqa_json(const json& extra = json::object()) {
  json options = {{"dim", kDim}, {"num_heads", 4}, {"num_kv_heads", 2}};
  options.update(extra);
  return options.dump();
}

template <typename Impl>
std::shared_ptr<Impl> impl_of(const Attention& attn) {
  auto impl = std::dynamic_pointer_cast<Impl>(attn.ptr());
  EXPECT_NE(impl, nullptr) << attn->mechanism();
  return impl;
}

// Small valid values for every required option in the catalogue (dim 32, 4 heads: every head
// width divides, every group count divides the head count).
json required_value(const std::string& option) {
  static const std::map<std::string, json> values = {
      {"dim", kDim},
      {"num_heads", 4},
      {"num_kv_heads", 2},
      {"num_kv_groups", 2},
      {"num_qk_heads", 2},
      {"num_v_heads", 4},
      {"attn", json::parse(R"({"type": "gqa", "dim": 32, "num_heads": 4, "num_kv_heads": 2,
                               "causal": true})")},
      {"attn_a", json::parse(R"({"type": "local", "dim": 32, "num_heads": 4, "window_size": 8})")},
      {"attn_b", json::parse(R"({"type": "linear", "dim": 32, "num_heads": 4})")},
  };
  const auto it = values.find(option);
  if (it == values.end()) {
    ADD_FAILURE() << "no test value for the required option " << option;
    return nullptr;
  }
  return it->second;
}

json required_options(const MechanismInfo& m) {
  json options = json::object();
  for (const OptionInfo& o : m.options) {
    if (o.required) options[o.name] = required_value(o.name);
  }
  return options;
}

// The catalogue entry of option `name` of mechanism `mechanism` (an empty one if absent).
OptionInfo find_option(const std::string& mechanism, const std::string& name) {
  for (const MechanismInfo& m : mechanism_catalog()) {
    if (m.name != mechanism) continue;
    for (const OptionInfo& o : m.options) {
      if (o.name == name) return o;
    }
  }
  ADD_FAILURE() << mechanism << " has no option " << name << " in the catalogue";
  return {};
}

void expect_runs(Attention attn, const MechanismInfo& m) {
  EXPECT_EQ(attn->mechanism(), m.class_name);
  EXPECT_EQ(attn->dim(), kDim);
  torch::NoGradGuard no_grad;
  torch::Tensor y = attn(torch::randn({2, 16, kDim}));
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({2, 16, kDim}));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

TEST(Factory, ResearchMaskersInlineOrAsText) {
  const char* maskers = R"([{"type":"sink","sink_size":2},{"type":"oracle_top_k","heavy_size":3}])";
  for (const std::string& options :
       {std::string(R"({"dim": 32, "num_heads": 4, "num_kv_heads": 2, "maskers": )") + maskers +
            "}",
        std::string(R"({"dim": 32, "num_heads": 4, "num_kv_heads": 2, "maskers": )") +
            json(maskers).dump() + "}"}) {
    Attention m = make_attention("research", options);
    EXPECT_EQ(m->mechanism(), "ResearchAttentionModule");
    EXPECT_EQ(m->forward(torch::randn({1, 5, 32})).sizes(), torch::IntArrayRef({1, 5, 32}));
  }
  EXPECT_THAT([] { make_attention("research", R"({"dim": 32, "num_heads": 4,
                                                 "num_kv_heads": 2, "maskers": 3})"); },
              ::testing::ThrowsMessage<c10::Error>(::testing::HasSubstr(
                  "option \"maskers\" expects a JSON array or object (or its text), got 3")));
}

// --- the catalogue -------------------------------------------------------------------------------

TEST(Factory, CatalogListsTheSequenceMechanismsInRegistryOrder) {
  std::vector<std::string> names;
  for (const MechanismInfo& m : mechanism_catalog()) names.push_back(m.name);
  EXPECT_EQ(names, (std::vector<std::string>{"standard", "mqa",      "gqa",        "mla",
                                             "bigbird",  "dsa",      "minimax",    "hca",
                                             "csa",      "delta",    "diff",       "local",
                                             "dilated",  "block",    "longformer", "alibi",
                                             "lsh",      "linear",   "gated",      "combined",
                                             "gdn",      "research"}));
}

TEST(Factory, CatalogEntriesAreWellFormed) {
  const std::set<std::string> types = {"int",    "bool", "float", "int?",       "float?",
                                       "string", "int[]", "rope", "rope?", "decay_gate",
                                       "attention", "json"};
  for (const MechanismInfo& m : mechanism_catalog()) {
    SCOPED_TRACE(m.name);
    EXPECT_FALSE(m.class_name.empty());
    ASSERT_FALSE(m.options.empty());
    EXPECT_TRUE(m.options.front().required);
    bool seen_optional = false;
    std::set<std::string> names;
    for (const OptionInfo& o : m.options) {
      SCOPED_TRACE(o.name);
      EXPECT_TRUE(names.insert(o.name).second) << "duplicate option";
      EXPECT_EQ(types.count(o.type), 1u) << o.type;
      if (o.required) {
        EXPECT_FALSE(seen_optional) << "required options come first";
        EXPECT_EQ(o.default_json, "");
      } else {
        seen_optional = true;
        EXPECT_TRUE(json::accept(o.default_json)) << o.default_json;
      }
    }
  }
}

// The defaults come from default-constructed Options structs.
TEST(Factory, CatalogDefaultsAreTheOptionsStructDefaults) {
  const OptionInfo dim = find_option("gqa", "dim");
  EXPECT_TRUE(dim.required);
  EXPECT_EQ(dim.type, "int");
  const OptionInfo causal = find_option("gqa", "causal");
  EXPECT_FALSE(causal.required);
  EXPECT_EQ(causal.type, "bool");
  EXPECT_EQ(causal.default_json, "false");
  EXPECT_EQ(find_option("mla", "causal").default_json, "true");
  EXPECT_EQ(find_option("gqa", "qk_norm_eps").type, "float?");
  EXPECT_EQ(find_option("gqa", "qk_norm_eps").default_json, "null");
  EXPECT_EQ(find_option("gqa", "window_left").type, "int?");
  EXPECT_EQ(find_option("gqa", "rope").type, "rope?");
  EXPECT_EQ(find_option("gqa", "rope").default_json, "null");
  EXPECT_EQ(find_option("dsa", "top_k").default_json, "64");
  EXPECT_EQ(json::parse(find_option("lsh", "temperature").default_json), json(1.0));
  EXPECT_EQ(find_option("longformer", "global_positions").type, "int[]");
  EXPECT_EQ(find_option("longformer", "global_positions").default_json, "[]");
  EXPECT_EQ(find_option("linear", "feature_map").type, "string");
  EXPECT_EQ(find_option("linear", "feature_map").default_json, "\"elu_plus_one\"");

  const OptionInfo mla_rope = find_option("mla", "rope");
  EXPECT_EQ(mla_rope.type, "rope");
  const json rope = json::parse(mla_rope.default_json);
  EXPECT_EQ(rope["style"], "interleaved");
  EXPECT_EQ(rope["channels"], "first");
  EXPECT_EQ(rope["scaling"], "none");
  EXPECT_EQ(rope["theta"], json(10000.0));
  EXPECT_EQ(rope["original_max_position_embeddings"], 4096);

  const OptionInfo gate = find_option("gdn", "decay_gate");
  EXPECT_EQ(gate.type, "decay_gate");
  const json mamba = json::parse(gate.default_json);
  EXPECT_EQ(mamba["type"], "mamba");
  EXPECT_EQ(mamba["normalizer"], json(16.0));
  EXPECT_EQ(mamba["dt_max"], json(0.1));

  const OptionInfo attn = find_option("gated", "attn");
  EXPECT_TRUE(attn.required);
  EXPECT_EQ(attn.type, "attention");
  EXPECT_TRUE(find_option("combined", "attn_a").required);
  EXPECT_TRUE(find_option("combined", "attn_b").required);
  EXPECT_EQ(find_option("combined", "gate_bias").default_json, "true");
  EXPECT_EQ(find_option("gdn", "num_v_heads").type, "int");
}

TEST(Factory, CatalogJsonListsEveryMechanism) {
  const json catalog = json::parse(mechanism_catalog_json());
  ASSERT_TRUE(catalog.is_array());
  ASSERT_EQ(catalog.size(), mechanism_catalog().size());
  for (size_t i = 0; i < catalog.size(); ++i) {
    const MechanismInfo& m = mechanism_catalog()[i];
    SCOPED_TRACE(m.name);
    EXPECT_EQ(catalog[i]["name"], m.name);
    EXPECT_EQ(catalog[i]["class_name"], m.class_name);
    const json& options = catalog[i]["options"];
    ASSERT_TRUE(options.is_array());
    ASSERT_EQ(options.size(), m.options.size());
    for (size_t j = 0; j < options.size(); ++j) {
      const OptionInfo& o = m.options[j];
      EXPECT_EQ(options[j]["name"], o.name);
      EXPECT_EQ(options[j]["type"], o.type);
      EXPECT_EQ(options[j]["required"], o.required);
      EXPECT_EQ(options[j]["default"],
                o.required ? json(nullptr) : json::parse(o.default_json));
    }
  }
  EXPECT_EQ(catalog[2]["name"], "gqa");
  EXPECT_EQ(catalog[2]["options"][4]["name"], "causal");
  EXPECT_EQ(catalog[2]["options"][4]["default"], false);
}

// --- building ------------------------------------------------------------------------------------

TEST(Factory, EveryMechanismBuildsFromItsRequiredOptions) {
  torch::manual_seed(0);
  for (const MechanismInfo& m : mechanism_catalog()) {
    SCOPED_TRACE(m.name);
    expect_runs(make_attention(m.name, required_options(m).dump()), m);
  }
}

// Every default written out as JSON reads back: the catalogue's forms are the factory's forms.
TEST(Factory, EveryMechanismBuildsFromAllItsDefaultsSpelledOut) {
  torch::manual_seed(1);
  for (const MechanismInfo& m : mechanism_catalog()) {
    SCOPED_TRACE(m.name);
    json options = required_options(m);
    for (const OptionInfo& o : m.options) {
      if (!o.required) options[o.name] = json::parse(o.default_json);
    }
    expect_runs(make_attention(m.class_name, options.dump()), m);
  }
}

TEST(Factory, NamesMatchInAnyCase) {
  for (const char* name : {"gqa", "GQA", "GroupedQueryAttention", "groupedqueryattention"}) {
    EXPECT_EQ(make_attention(name, gqa_json())->mechanism(), "GroupedQueryAttention") << name;
  }
}

TEST(Factory, GivenOptionsAreApplied) {
  EXPECT_FALSE(make_attention("gqa", gqa_json())->supports_decoding());
  EXPECT_TRUE(make_attention("gqa", gqa_json({{"causal", true}}))->supports_decoding());

  auto gqa = impl_of<GroupedQueryAttentionImpl>(make_attention(
      "gqa", gqa_json(json::parse(R"({"head_dim": 16, "qk_norm_eps": 1e-5, "window_left": 3,
          "sinks": true, "dropout": 0, "rope": {"dim": 4, "style": "interleaved", "theta": 1e6,
          "scaling": "yarn", "factor": 2}})"))));
  ASSERT_NE(gqa, nullptr);
  EXPECT_EQ(gqa->q_proj->weight.sizes(), torch::IntArrayRef({4 * 16, kDim}));
  EXPECT_EQ(gqa->k_proj->weight.sizes(), torch::IntArrayRef({2 * 16, kDim}));
  EXPECT_EQ(gqa->options.qk_norm_eps(), std::optional<double>(1e-5));
  EXPECT_EQ(gqa->options.window_left(), std::optional<int64_t>(3));
  EXPECT_FALSE(gqa->options.window_right().has_value());
  EXPECT_TRUE(gqa->options.sinks());
  EXPECT_EQ(gqa->options.dropout(), 0.0);
  ASSERT_TRUE(gqa->options.rope().has_value());
  const RopeOptions& rope = *gqa->options.rope();
  EXPECT_EQ(rope.dim(), 4);
  EXPECT_EQ(rope.style(), RopeStyle::kInterleaved);
  EXPECT_EQ(rope.channels(), RopeChannels::kFirst);  // not given: RopeOptions' default
  EXPECT_EQ(rope.theta(), 1e6);
  EXPECT_EQ(rope.scaling(), RopeScaling::kYarn);
  EXPECT_EQ(rope.factor(), 2.0);

  EXPECT_FALSE(impl_of<GroupedQueryAttentionImpl>(
                   make_attention("gqa", gqa_json({{"rope", nullptr}, {"qk_norm_eps", nullptr}})))
                   ->options.rope()
                   .has_value());

  // A nested struct given in part keeps the rest of the mechanism's default (MLA: interleaved).
  auto mla = impl_of<MultiHeadLatentAttentionImpl>(make_attention(
      "mla", R"({"dim": 32, "num_heads": 4, "q_lora_rank": 16, "rope": {"theta": 500}})"));
  ASSERT_NE(mla, nullptr);
  EXPECT_EQ(mla->options.q_lora_rank(), std::optional<int64_t>(16));
  EXPECT_EQ(mla->options.rope().style(), RopeStyle::kInterleaved);
  EXPECT_EQ(mla->options.rope().theta(), 500.0);

  auto longformer = impl_of<LongformerAttentionImpl>(make_attention(
      "longformer", R"({"dim": 32, "num_heads": 4, "global_positions": [0, 5]})"));
  ASSERT_NE(longformer, nullptr);
  EXPECT_EQ(longformer->options.global_positions(), (std::vector<int64_t>{0, 5}));

  auto linear = impl_of<LinearAttentionImpl>(make_attention(
      "linear", R"({"dim": 32, "num_heads": 4, "feature_map": "relu", "causal": true})"));
  ASSERT_NE(linear, nullptr);
  EXPECT_EQ(linear->options.feature_map(), LinearFeatureMap::kRelu);
  EXPECT_TRUE(linear->supports_decoding());

  auto gdn = impl_of<GatedDeltaNetImpl>(make_attention(
      "gdn", R"({"dim": 32, "num_qk_heads": 2, "num_v_heads": 4,
                 "decay_gate": {"type": "log_sigmoid", "normalizer": 8}})"));
  ASSERT_NE(gdn, nullptr);
  const auto* log_sigmoid = std::get_if<LogSigmoidDecayGateOptions>(&gdn->options.decay_gate());
  ASSERT_NE(log_sigmoid, nullptr);
  EXPECT_EQ(log_sigmoid->normalizer(), 8.0);
  auto gdn_mamba = impl_of<GatedDeltaNetImpl>(make_attention(
      "gdn",
      R"({"dim": 32, "num_qk_heads": 2, "num_v_heads": 4, "decay_gate": {"dt_max": 0.05}})"));
  ASSERT_NE(gdn_mamba, nullptr);
  const auto* mamba = std::get_if<MambaDecayGateOptions>(&gdn_mamba->options.decay_gate());
  ASSERT_NE(mamba, nullptr);
  EXPECT_EQ(mamba->dt_max(), 0.05);
  EXPECT_EQ(mamba->normalizer(), 16.0);
}

TEST(Factory, WrappersTakeMechanismObjects) {
  auto gated = impl_of<GatedAttentionImpl>(make_attention("gated", R"({
      "attn": {"type": "GQA", "dim": 32, "num_heads": 4, "num_kv_heads": 2, "causal": true},
      "gate_hidden": 8})"));
  ASSERT_NE(gated, nullptr);
  EXPECT_EQ(gated->attn->mechanism(), "GroupedQueryAttention");
  EXPECT_TRUE(gated->supports_decoding());
  EXPECT_EQ(gated->options.gate_hidden(), 8);

  auto combined = impl_of<CombinedAttentionImpl>(make_attention("combined", R"({
      "attn_a": {"type": "local", "dim": 32, "num_heads": 4, "window_size": 8},
      "attn_b": {"type": "LinearAttention", "dim": 32, "num_heads": 4},
      "gate_bias": false})"));
  ASSERT_NE(combined, nullptr);
  EXPECT_EQ(combined->attn_a->mechanism(), "LocalAttention");
  EXPECT_EQ(combined->attn_b->mechanism(), "LinearAttention");
  EXPECT_FALSE(combined->options.gate_bias());

  // Wrappers nest.
  Attention nested = make_attention("gated", R"({"attn": {"type": "gated",
      "attn": {"type": "alibi", "dim": 32, "num_heads": 4}}})");
  EXPECT_EQ(impl_of<GatedAttentionImpl>(nested)->attn->mechanism(), "GatedAttention");
}

// --- errors --------------------------------------------------------------------------------------

TEST(Factory, UnknownMechanismListsTheValidNames) {
  ATTNKIT_EXPECT_ERROR(make_attention("nosuch", "{}"), HasSubstr("unknown mechanism \"nosuch\""),
                       HasSubstr("standard, mqa, gqa, mla"), HasSubstr("combined, gdn"));
  // Set-to-set modules are not sequence mechanisms.
  ATTNKIT_EXPECT_ERROR(make_attention("slot", "{}"), HasSubstr("unknown mechanism \"slot\""));
}

TEST(Factory, InvalidJsonNamesTheMechanismAndTheText) {
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", "{dim: 32}"),
                       HasSubstr("GroupedQueryAttention: invalid JSON options {dim: 32}"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", ""), HasSubstr("GroupedQueryAttention: invalid JSON"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", "[32, 4, 2]"), HasSubstr("GroupedQueryAttention"),
                       HasSubstr("must be a JSON object"), HasSubstr("got [32,4,2]"));
}

TEST(Factory, MissingRequiredOption) {
  ATTNKIT_EXPECT_ERROR(
      make_attention("gqa", R"({"dim": 32, "num_heads": 4})"),
      HasSubstr(R"(GroupedQueryAttention: missing required option "num_kv_heads" )"
                R"((expects an int))"));
  ATTNKIT_EXPECT_ERROR(make_attention("gated", R"({"gate_hidden": 8})"),
                       HasSubstr("GatedAttention: missing required option \"attn\""));
}

TEST(Factory, UnknownOptionListsTheValidOnes) {
  ATTNKIT_EXPECT_ERROR(
      make_attention("gqa", gqa_json({{"causl", true}})),
      HasSubstr("GroupedQueryAttention: unknown option \"causl\" (given true)"),
      HasSubstr("valid options: dim, num_heads, num_kv_heads, head_dim, causal, dropout"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", gqa_json({{"rope", {{"sytle", "half"}}}})),
                       HasSubstr("GroupedQueryAttention: unknown option \"rope.sytle\""),
                       HasSubstr("rope.style"));
  ATTNKIT_EXPECT_ERROR(
      make_attention("gdn", R"({"dim": 32, "num_qk_heads": 2, "num_v_heads": 4,
                                "decay_gate": {"type": "log_sigmoid", "dt_max": 0.05}})"),
      HasSubstr("GatedDeltaNet: unknown option \"decay_gate.dt_max\""),
      HasSubstr("valid options: decay_gate.type, decay_gate.normalizer"));
}

TEST(Factory, WrongTypeNamesTheOptionTheExpectedAndTheGivenValue) {
  ATTNKIT_EXPECT_ERROR(
      make_attention("gqa", gqa_json({{"causal", "yes"}})),
      HasSubstr(R"(GroupedQueryAttention: option "causal" expects a bool, got "yes")"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", R"({"dim": 32.5, "num_heads": 4, "num_kv_heads": 2})"),
                       HasSubstr(R"(option "dim" expects an int, got 32.5)"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", gqa_json({{"head_dim", true}})),
                       HasSubstr(R"(option "head_dim" expects an int, got true)"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", gqa_json({{"head_dim", nullptr}})),
                       HasSubstr(R"(option "head_dim" expects an int, got null)"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", gqa_json({{"dropout", "0.1"}})),
                       HasSubstr(R"(option "dropout" expects a number, got "0.1")"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", gqa_json({{"window_left", 2.5}})),
                       HasSubstr(R"(option "window_left" expects an int or null, got 2.5)"));
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", gqa_json({{"rope", true}})),
                       HasSubstr(R"(option "rope" expects an object of RopeOptions fields)"),
                       HasSubstr("or null"),
                       HasSubstr("got true"));
  ATTNKIT_EXPECT_ERROR(
      make_attention("gqa", gqa_json({{"rope", {{"style", "sideways"}}}})),
      HasSubstr(R"(option "rope.style" expects one of "half", "interleaved", got "sideways")"));
  ATTNKIT_EXPECT_ERROR(
      make_attention("longformer", R"({"dim": 32, "num_heads": 4, "global_positions": [0, "a"]})"),
      HasSubstr(R"(LongformerAttention: option "global_positions" expects an array of ints, )"
                R"(got [0,"a"])"));
  ATTNKIT_EXPECT_ERROR(
      make_attention("linear", R"({"dim": 32, "num_heads": 4, "feature_map": "softmax"})"),
      HasSubstr(R"(option "feature_map" expects one of "elu_plus_one", "relu", got "softmax")"));
  ATTNKIT_EXPECT_ERROR(
      make_attention("gdn", R"({"dim": 32, "num_qk_heads": 2, "num_v_heads": 4,
                                "decay_gate": {"type": "gru"}})"),
      HasSubstr(R"(option "decay_gate.type" expects one of "mamba", "log_sigmoid", got "gru")"));
}

TEST(Factory, ErrorsInsideAWrapperNameThePath) {
  ATTNKIT_EXPECT_ERROR(make_attention("gated", R"({"attn": "gqa"})"),
                       HasSubstr(R"(GatedAttention: option "attn" expects a mechanism object)"),
                       HasSubstr(R"(got "gqa")"));
  ATTNKIT_EXPECT_ERROR(make_attention("gated", R"({"attn": {"dim": 32}})"),
                       HasSubstr(R"(GatedAttention: option "attn" expects a mechanism object)"));
  ATTNKIT_EXPECT_ERROR(
      make_attention("gated", R"({"attn": {"type": "gqa", "dim": 32, "num_heads": 4}})"),
      HasSubstr(R"(GatedAttention: option "attn": GroupedQueryAttention: missing required )"
                R"(option "num_kv_heads")"));
  ATTNKIT_EXPECT_ERROR(
      make_attention("combined", R"({"attn_a": {"type": "nosuch"}, "attn_b": {"type": "gqa"}})"),
      HasSubstr(R"(CombinedAttention: option "attn_a": )"
                R"(make_attention: unknown mechanism "nosuch")"));
  // The wrapped mechanism's own checks, under the wrapper's path.
  ATTNKIT_EXPECT_ERROR(
      make_attention("gated",
                     R"({"attn": {"type": "gqa", "dim": 32, "num_heads": 4, "num_kv_heads": 3}})"),
      HasSubstr(R"(GatedAttention: option "attn": GroupedQueryAttention)"),
      HasSubstr("must be divisible by num_kv_heads (3)"));
}

// The values themselves are the mechanisms' to check, with their own messages.
TEST(Factory, MechanismsCheckTheValues) {
  ATTNKIT_EXPECT_ERROR(make_attention("gqa", R"({"dim": 32, "num_heads": 4, "num_kv_heads": 3})"),
                       HasSubstr("GroupedQueryAttention"),
                       HasSubstr("must be divisible by num_kv_heads (3)"));
  ATTNKIT_EXPECT_ERROR(make_attention("combined", R"({
      "attn_a": {"type": "local", "dim": 32, "num_heads": 4},
      "attn_b": {"type": "linear", "dim": 16, "num_heads": 4}})"),
                       HasSubstr("attn_a.dim() (32) and attn_b.dim() (16) must match"));
}

}  // namespace
}  // namespace attnkit
