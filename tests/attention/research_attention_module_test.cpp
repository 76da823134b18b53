// Tests for include/attnkit/attention/research_attention_module.h: the mechanism contract, the
// module against research attention on its own projections, decoding with masker caches, and
// option errors.

#include <attnkit/attention/research_attention_module.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "support/contract.h"
#include "support/tolerance.h"

namespace attnkit {
namespace {

using testing::close;
using ::testing::HasSubstr;

// Counts, not fractions: a prefill and token-by-token decoding then pick the same keys.
constexpr const char* kDecodable =
    R"([{"type":"sink","sink_size":2},{"type":"oracle_top_k","heavy_size":3}])";

ATTNKIT_CONTRACT_SUITE(
    ResearchAttentionModule,
    testing::ContractCase{"sink_top_k_causal",
                          [] {
                            return as_attention(ResearchAttentionModule(
                                ResearchAttentionModuleOptions(32, 4, 2).maskers(kDecodable)));
                          },
                          true},
    testing::ContractCase{"sink_local_non_causal",
                          [] {
                            return as_attention(ResearchAttentionModule(
                                ResearchAttentionModuleOptions(32, 4, 4)
                                    .causal(false)
                                    .bias(true)
                                    .maskers(R"([{"type":"sink","sink_size":2},)"
                                             R"({"type":"local","window_size":3}])")));
                          },
                          false},
    testing::ContractCase{"dense_causal",
                          [] {
                            return as_attention(ResearchAttentionModule(
                                ResearchAttentionModuleOptions(32, 4, 1).maskers("[]")));
                          },
                          true});

TEST(ResearchAttentionModule, MatchesResearchAttentionOnItsProjections) {
  torch::manual_seed(0);
  ResearchAttentionModule m(ResearchAttentionModuleOptions(32, 4, 2).maskers(kDecodable));
  auto x = torch::randn({2, 9, 32});
  auto q = m->q_proj(x).view({2, 9, 4, 8}).transpose(1, 2);
  auto k = m->k_proj(x).view({2, 9, 2, 8}).transpose(1, 2);
  auto v = m->v_proj(x).view({2, 9, 2, 8}).transpose(1, 2);
  auto causal = torch::full({9, 9}, -INFINITY).triu(1).view({1, 1, 9, 9}).expand({2, 1, 9, 9});
  sparse::MaskerState state;
  auto r = m->research_attention().custom_attention(q, k, v, causal, 1.0 / std::sqrt(8.0), 0.0,
                                                    state, 0);
  auto want = m->o_proj(r.output.reshape({2, 9, 32}));
  EXPECT_TRUE(close(m(x), want));
  // Each query kept its 2 sinks and 3 heaviest keys (fewer early on, where all keys are kept).
  EXPECT_NEAR(r.mask.dense()[0][0][8].sum().item<double>(), 5.0, 1e-6);
}

TEST(ResearchAttentionModule, DecodingKeepsMaskerCachesInTheState) {
  torch::manual_seed(1);
  ResearchAttentionModule m(ResearchAttentionModuleOptions(16, 2, 1).maskers(
      R"([{"type":"sink","sink_size":1},{"type":"local","window_size":2}])"));
  auto x = torch::randn({1, 6, 16});
  auto state = m->init_state(1);
  m(x.narrow(1, 0, 4), state);
  EXPECT_EQ(state.length(), 4);
  auto step = m(x.narrow(1, 4, 1), state);
  EXPECT_EQ(step.sizes(), (std::vector<int64_t>{1, 1, 16}));
  EXPECT_EQ(state.length(), 5);
  EXPECT_TRUE(state.contains("k"));
}

TEST(ResearchAttentionModule, WeightsFromForwardWithAux) {
  torch::manual_seed(2);
  ResearchAttentionModule m(ResearchAttentionModuleOptions(16, 2, 2).maskers(kDecodable));
  auto aux = m->forward_with_aux(torch::randn({1, 7, 16}));
  ASSERT_TRUE(aux.attn_weights.defined());
  EXPECT_TRUE(close(aux.attn_weights.sum(-1), torch::ones({1, 2, 7})));
  // Causal: nothing above the diagonal.
  EXPECT_EQ(aux.attn_weights.triu(1).abs().sum().item<double>(), 0.0);
}

TEST(ResearchAttentionModule, OptionErrors) {
  auto err = [](ResearchAttentionModuleOptions o) -> std::string {
    try {
      ResearchAttentionModule m(o);
    } catch (const c10::Error& e) {
      return e.what_without_backtrace();
    }
    return "(no error)";
  };
  EXPECT_THAT(err(ResearchAttentionModuleOptions(32, 4, 3)),
              HasSubstr("ResearchAttentionModule: num_heads (4) must be a positive multiple of "
                        "num_kv_heads (3)"));
  EXPECT_THAT(err(ResearchAttentionModuleOptions(32, 4, 2).maskers(R"([{"type":"nope"}])")),
              HasSubstr("ResearchAttentionModule: maskers: masker config: unknown type 'nope'"));
  EXPECT_THAT(err(ResearchAttentionModuleOptions(32, 4, 2).maskers("{")),
              HasSubstr("ResearchAttentionModule: maskers: masker configs: invalid JSON"));
  EXPECT_THAT(err(ResearchAttentionModuleOptions(30, 4, 2)),
              HasSubstr("dim (30) must be divisible by num_heads (4) when head_dim is 0"));
}

}  // namespace
}  // namespace attnkit
