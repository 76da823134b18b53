// Tests for include/attnkit/sparse/masker.h: sizes, JSON configs and their errors, the registry
// (a user masker, the one-sampling-masker rule) and the masker base (the FULL rule, input
// checks), as sparse-attention-hub's maskers/test_base.py and research_attention/test_base.py.

#include <attnkit/sparse/fixed_maskers.h>
#include <attnkit/sparse/masker.h>
#include <attnkit/sparse/research_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>

#include "sparse/sparse_test_util.h"

namespace {

using namespace attnkit::sparse::test_util;  // NOLINT

using namespace attnkit::sparse;
using ::testing::HasSubstr;

Mask run(const Masker& masker, const Qkv& x, const Mask& previous) {
  MaskerState state;
  return masker.add_mask(x.k, x.q, x.v, {}, 1.0, 0.0, state, previous, 0);
}

// ---- sizes and configs --------------------------------------------------------------------

TEST(MaskerSize, FractionOrCount) {
  MaskerSize f = 0.1, c = 128;
  EXPECT_TRUE(f.is_fraction());
  EXPECT_FALSE(c.is_fraction());
  EXPECT_EQ(f.resolve(64), 6);  // int(6.4)
  EXPECT_EQ(c.resolve(64), 128);
  EXPECT_EQ(MaskerSize(1.0).resolve(37), 37);
  EXPECT_EQ(f.str(), "0.1");
  EXPECT_EQ(MaskerSize(1.0).str(), "1.0");
  EXPECT_EQ(c.str(), "128");
}

TEST(MaskerConfig, JsonFloatIsFractionIntegerIsCount) {
  auto frac = std::dynamic_pointer_cast<const OracleTopKMasker>(
      make_masker(R"({"type": "oracle_top_k", "heavy_size": 0.25})"));
  ASSERT_TRUE(frac);
  EXPECT_TRUE(frac->options().heavy_size().is_fraction());
  EXPECT_DOUBLE_EQ(frac->options().heavy_size().value(), 0.25);
  auto count = std::dynamic_pointer_cast<const OracleTopKMasker>(
      make_masker(R"({"type": "oracle_top_k", "heavy_size": 7})"));
  ASSERT_TRUE(count);
  EXPECT_FALSE(count->options().heavy_size().is_fraction());
  EXPECT_EQ(count->options().heavy_size().resolve(100), 7);
}

TEST(MaskerConfig, Errors) {
  EXPECT_THAT(error_of([] { make_masker("{"); }), HasSubstr("invalid JSON"));
  EXPECT_THAT(error_of([] { make_masker("[1]"); }), HasSubstr("expected a JSON object"));
  EXPECT_THAT(error_of([] { make_masker(R"({"window_size": 3})"); }),
              HasSubstr("expected a string \"type\""));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "nope"})"); }),
              HasSubstr("unknown type 'nope' (expected one of"));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "local"})"); }),
              HasSubstr("masker 'local': missing \"window_size\""));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "local", "window_size": "8"})"); }),
              HasSubstr("\"window_size\" expected a fraction (0.1) or a count (128), got \"8\""));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "local", "window_size": 8, "windo": 1})"); }),
              HasSubstr("masker 'local': unknown key \"windo\" (expected window_size)"));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "local", "window_size": 0})"); }),
              HasSubstr("LocalMasker: window_size must be > 0, got 0"));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "sink", "sink_size": -1})"); }),
              HasSubstr("SinkMasker: sink_size must be > 0, got -1"));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "oracle_top_k", "heavy_size": 0})"); }),
              HasSubstr("OracleTopKMasker: heavy_size must be > 0, got 0"));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "oracle_top_p", "top_p": 1.5})"); }),
              HasSubstr("OracleTopPMasker: top_p must be in [0, 1], got 1.5"));
  EXPECT_THAT(error_of([] { make_maskers(R"({"type": "sink", "sink_size": 4})"); }),
              HasSubstr("expected a JSON array"));
}

// A user-defined sampling masker registered at run time: the registry takes it, and a config
// with two sampling maskers is rejected.
class EveryOtherKey : public Masker {
 public:
  std::string type() const override { return "test_every_other_key"; }
  MaskerKind kind() const override { return MaskerKind::kSampling; }

 protected:
  Mask compute(const MaskerInputs& in, const Mask& previous) const override {
    auto cols = torch::arange(0, in.k_len, 2, torch::kLong)
                    .expand({in.batch, in.heads, in.q_len, (in.k_len + 1) / 2})
                    .contiguous();
    auto data = torch::full(cols.sizes(), 0.5);
    return previous.merge(Mask::from_row_wise(in.mask_shape(), cols, data));
  }
};

TEST(MaskerRegistry, UserMaskerAndOneSamplingMaskerRule) {
  static bool registered = [] {
    register_masker("test_every_other_key", [](const MaskerConfig& c) -> MaskerPtr {
      c.finish();
      return std::make_shared<EveryOtherKey>();
    });
    return true;
  }();
  ASSERT_TRUE(registered);
  auto types = masker_types();
  for (const char* t : {"causal", "local", "oracle_top_k", "oracle_top_p", "sink",
                        "test_every_other_key"}) {
    EXPECT_NE(std::find(types.begin(), types.end(), t), types.end()) << t;
  }
  EXPECT_THAT(error_of([] { register_masker("local", [](const MaskerConfig&) -> MaskerPtr {
                return nullptr;
              }); }),
              HasSubstr("type 'local' is already registered"));
  auto one = make_maskers(R"([{"type": "sink", "sink_size": 2}, {"type": "test_every_other_key"}])");
  EXPECT_EQ(one.size(), 2u);
  const char* two =
      R"([{"type": "test_every_other_key"}, {"type": "sink", "sink_size": 2},
          {"type": "test_every_other_key"}])";
  EXPECT_THAT(error_of([&] { make_maskers(two); }),
              HasSubstr("at most one sampling masker is allowed, got 2"));
  auto m = make_masker(R"({"type": "test_every_other_key"})");
  EXPECT_THAT(error_of([&] { ResearchAttention({m, m}); }),
              HasSubstr("ResearchAttention: at most one sampling masker is allowed, got 2"));
  // The user masker's mask, through the framework: keys 0, 2, 4 at 0.5.
  auto x = random_qkv(1, 1, 1, 1, 6, 4);
  auto got = run(*m, x, empty_for(x));
  EXPECT_TRUE(torch::equal(got.dense().view(-1), torch::tensor({0.5f, 0.f, 0.5f, 0.f, 0.5f, 0.f})));
}

// ---- the base -----------------------------------------------------------------------------

TEST(MaskerBase, FullPreviousIsReturnedUnchanged) {
  auto x = random_qkv(1, 2, 2, 3, 16, 4);
  Mask full = Mask::full({1, 2, 3, 16});
  for (const char* json : {R"({"type": "local", "window_size": 2})", R"({"type": "causal"})",
                           R"({"type": "sink", "sink_size": 2})",
                           R"({"type": "oracle_top_k", "heavy_size": 2})",
                           R"({"type": "oracle_top_p", "top_p": 0.5})"}) {
    EXPECT_TRUE(run(*make_masker(json), x, full).is_full()) << json;
  }
}

TEST(MaskerBase, InputChecks) {
  auto m = make_masker(R"({"type": "sink", "sink_size": 2})");
  auto x = random_qkv(1, 4, 2, 3, 16, 4);
  MaskerState s;
  auto prev = empty_for(x);
  EXPECT_THAT(error_of([&] { m->add_mask(x.k, x.q[0], x.v, {}, 1.0, 0.0, s, prev); }),
              HasSubstr("masker 'sink': queries must be [B, H, Tq, D], got [4, 3, 4]"));
  auto k3 = torch::randn({1, 3, 16, 4});
  EXPECT_THAT(error_of([&] { m->add_mask(k3, x.q, k3, {}, 1.0, 0.0, s, prev); }),
              HasSubstr("query heads (4) must be a multiple of key heads (3)"));
  EXPECT_THAT(error_of([&] { m->add_mask(x.k, x.q, x.v, {}, 1.0, 0.0, s, Mask::empty({1, 4, 3, 15})); }),
              HasSubstr("previous_mask must be [1, 4, 3, 16], got [1, 4, 3, 15]"));
  EXPECT_THAT(error_of([&] { m->add_mask(x.k, x.q, x.v, torch::zeros({1, 4, 3, 8}), 1.0, 0.0, s, prev); }),
              HasSubstr("attention_mask must be [B=1, 1 or H=4, Tq=3, >= Tk=16], got [1, 4, 3, 8]"));
  // An attention mask longer than Tk is sliced (HF caches pad it).
  EXPECT_NO_THROW(m->add_mask(x.k, x.q, x.v, torch::zeros({1, 1, 3, 20}), 1.0, 0.0, s, prev));
}

}  // namespace
