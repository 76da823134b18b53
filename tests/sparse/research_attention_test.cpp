// Tests for include/attnkit/sparse/research_attention.h: attention under a mask (importance
// weighting, GQA, the additive mask, zero rows) against a per-row loop written from the
// definition, and the fused path against the dense reference for every masker configuration.

#include <attnkit/sparse/fixed_maskers.h>
#include <attnkit/sparse/research_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>
#include <string>
#include <vector>

#include "support/tolerance.h"

#include "sparse/sparse_test_util.h"

namespace {

using attnkit::sparse::test_util::Qkv;
using attnkit::sparse::test_util::random_qkv;

using namespace attnkit::sparse;
using attnkit::testing::close;
using attnkit::testing::EnvGuard;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();

// out[b, i, h] = sum_j w_j v_j / sum_j w_j with w_j = exp(s_j) / (m_j + 1e-6) over m_j > 0 (all
// keys, unweighted, when the mask is FULL or EMPTY); zeros when the sum is 0. In float64, one
// row at a time.
torch::Tensor naive_masked(const Qkv& x, const Mask& mask, const torch::Tensor& am,
                           double scaling) {
  const int64_t B = x.q.size(0), H = x.q.size(1), Tq = x.q.size(2), Tk = x.k.size(2);
  const int64_t G = H / x.k.size(1), Dv = x.v.size(3);
  auto m = mask.dense().to(torch::kDouble);
  const bool plain = mask.is_full() || mask.is_empty();
  auto out = torch::zeros({B, Tq, H, Dv}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      auto k = x.k[b][h / G].to(torch::kDouble), v = x.v[b][h / G].to(torch::kDouble);
      for (int64_t i = 0; i < Tq; ++i) {
        auto s = torch::mv(k, x.q[b][h][i].to(torch::kDouble)) * scaling;
        if (am.defined()) s = s + am[b][am.size(1) == 1 ? 0 : h][i].narrow(0, 0, Tk).to(torch::kDouble);
        auto w = torch::exp(s - s.max());
        if (!plain) {
          auto mi = m[b][h][i];
          w = torch::where(mi.gt(0), w / (mi + 1e-6), torch::zeros_like(w));
        }
        w = torch::nan_to_num(w, 0.0);
        const double z = w.sum().item<double>();
        if (z > 0) out[b][i][h] = torch::mv(v.t(), w) / z;
      }
    }
  }
  return out;
}

// A mask mixing weight-1 keys and sampled keys (p in (0, 1)) in INDEX form.
Mask mixed_mask(int64_t B, int64_t H, int64_t Tq, int64_t Tk, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t k = std::max<int64_t>(2, Tk / 4);
  auto cols = torch::randint(0, Tk, {B, H, Tq, k}, torch::kLong);
  auto data = torch::where(torch::rand({B, H, Tq, k}).lt(0.5), torch::ones({B, H, Tq, k}),
                           torch::rand({B, H, Tq, k}) * 0.9 + 0.05);
  return Mask::from_row_wise({B, H, Tq, Tk}, cols, data);
}

TEST(MaskedAttention, ReferenceMatchesTheDefinition) {
  auto x = random_qkv(2, 4, 2, 3, 19, 8, 1);
  Mask index = mixed_mask(2, 4, 3, 19, 2);
  Mask dense = Mask::from_dense({2, 4, 3, 19}, index.dense());
  torch::Tensor am = torch::randn({2, 1, 3, 21});
  for (const Mask* m : {&index, &dense}) {
    for (bool with_am : {false, true}) {
      auto a = with_am ? am : torch::Tensor();
      auto got = masked_attention_reference(x.q, x.k, x.v, *m, a, 0.3);
      EXPECT_TRUE(close(got, naive_masked(x, *m, a, 0.3))) << with_am;
    }
  }
}

TEST(MaskedAttention, FullAndEmptyAreDenseAttention) {
  auto x = random_qkv(1, 4, 1, 5, 11, 8, 3);
  auto am = torch::randn({1, 4, 5, 11});
  auto want = naive_masked(x, Mask::full({1, 4, 5, 11}), am, 0.5);
  for (const Mask& m : {Mask::full({1, 4, 5, 11}), Mask::empty({1, 4, 5, 11})}) {
    EXPECT_TRUE(close(masked_attention(x.q, x.k, x.v, m, am, 0.5), want));
    EXPECT_TRUE(close(masked_attention_reference(x.q, x.k, x.v, m, am, 0.5), want));
  }
  EXPECT_TRUE(close(dense_attention(x.q, x.k, x.v, am, 0.5), want));
}

TEST(MaskedAttention, FusedMatchesReferenceWithWeightsAndAdditiveMask) {
  for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{4, 4}, {4, 2}, {6, 1}}) {
    auto x = random_qkv(2, H, Hkv, 7, 45, 16, 4);
    Mask m = mixed_mask(2, H, 7, 45, 5);
    auto am = torch::randn({2, H, 7, 45});
    am.index_put_({"...", torch::indexing::Slice(0, 5)}, -kInf);
    for (bool with_am : {false, true}) {
      auto a = with_am ? am : torch::Tensor();
      auto fused = masked_attention(x.q, x.k, x.v, m, a, 0.25);
      EXPECT_TRUE(close(fused, naive_masked(x, m, a, 0.25))) << H << " " << Hkv << " " << with_am;
      EXPECT_TRUE(close(fused, masked_attention_reference(x.q, x.k, x.v, m, a, 0.25)));
    }
  }
}

TEST(MaskedAttention, RowsWithNoUsableKeyAreZero) {
  // Every listed key of query 0 is masked out by -inf: zeros, not NaN (upstream gives NaN).
  auto x = random_qkv(1, 1, 1, 2, 8, 4, 6);
  auto m = Mask::from_row_wise({1, 1, 2, 8}, torch::tensor({0, 1, 2, 3}, torch::kLong).view({1, 1, 2, 2}));
  auto am = torch::zeros({1, 1, 2, 8});
  am.index_put_({0, 0, 0, torch::indexing::Slice(0, 2)}, -kInf);
  for (const char* backend : {"fused", "reference"}) {
    EnvGuard env("ATTNKIT_BACKEND", backend);
    auto out = masked_attention(x.q, x.k, x.v, m, am, 1.0);
    EXPECT_FALSE(out.isnan().any().item<bool>()) << backend;
    EXPECT_TRUE(torch::equal(out[0][0], torch::zeros({1, 4}))) << backend;
    EXPECT_TRUE(close(out, naive_masked(x, m, am, 1.0))) << backend;
  }
}

TEST(MaskedAttention, BFloat16FusedMatchesReference) {
  auto x = random_qkv(1, 4, 2, 3, 64, 32, 7, torch::kBFloat16);
  Mask m = mixed_mask(1, 4, 3, 64, 8);
  auto fused = masked_attention(x.q, x.k, x.v, m, {}, 0.2);
  auto ref = masked_attention_reference(x.q, x.k, x.v, m, {}, 0.2);
  EXPECT_EQ(fused.scalar_type(), torch::kBFloat16);
  EXPECT_LT((fused.to(torch::kFloat) - ref.to(torch::kFloat)).abs().max().item<double>(), 2e-2);
}

TEST(MaskedAttention, Errors) {
  auto x = random_qkv(1, 4, 2, 3, 8, 4);
  auto err = [&](const Mask& m, const torch::Tensor& am) -> std::string {
    try {
      masked_attention(x.q, x.k, x.v, m, am, 1.0);
    } catch (const c10::Error& e) {
      return e.what_without_backtrace();
    }
    return "(no error)";
  };
  EXPECT_THAT(err(Mask::empty({1, 4, 3, 7}), {}),
              HasSubstr("masked_attention: mask must be [1, 4, 3, 8], got [1, 4, 3, 7]"));
  EXPECT_THAT(err(Mask::empty({1, 4, 3, 8}), torch::zeros({1, 2, 3, 8})),
              HasSubstr("attention_mask must be [B=1, 1 or H=4, Tq=3, >= Tk=8], got [1, 2, 3, 8]"));
}

// ---- ResearchAttention: every fixed configuration, fused against the reference ------------

const char* kConfigs[] = {
    R"([{"type":"sink","sink_size":4}])",
    R"([{"type":"local","window_size":8}])",
    R"([{"type":"sink","sink_size":4},{"type":"local","window_size":8}])",
    R"([{"type":"sink","sink_size":4},{"type":"local","window_size":8},
        {"type":"oracle_top_k","heavy_size":0.1}])",
    R"([{"type":"oracle_top_k","heavy_size":12},{"type":"causal"}])",
    R"([{"type":"sink","sink_size":2},{"type":"oracle_top_p","top_p":0.8}])",
    R"([{"type":"causal"}])",
};

TEST(ResearchAttention, FusedAgreesWithReferenceForEveryFixedConfig) {
  for (const char* cfg : kConfigs) {
    auto ra = ResearchAttention::from_json(cfg);
    for (auto [Tq, Tk] : {std::pair<int64_t, int64_t>{1, 96}, {5, 96}, {24, 24}}) {
      auto x = random_qkv(2, 4, 2, Tq, Tk, 16, 9);
      auto am = torch::zeros({2, 1, Tq, Tk});
      MaskerState s1, s2;
      auto fused = ra.custom_attention(x.q, x.k, x.v, am, 0.25, 0.0, s1, 0);
      auto mask = ra.build_mask(x.q, x.k, x.v, am, 0.25, 0.0, s2, 0);
      EXPECT_TRUE(torch::equal(fused.mask.dense(), mask.dense())) << cfg;
      auto ref = masked_attention_reference(x.q, x.k, x.v, mask, am, 0.25);
      EXPECT_TRUE(close(fused.output, ref)) << cfg << " Tq=" << Tq << " Tk=" << Tk;
      EXPECT_TRUE(close(ref, naive_masked(x, mask, am, 0.25))) << cfg;
      EXPECT_FALSE(fused.weights.defined());
    }
  }
}

TEST(ResearchAttention, WeightsDropoutAndTraining) {
  auto ra = ResearchAttention::from_json(
      R"([{"type":"sink","sink_size":2},{"type":"local","window_size":4}])");
  auto x = random_qkv(1, 2, 2, 3, 32, 8, 10);
  MaskerState s;
  auto r = ra.custom_attention(x.q, x.k, x.v, {}, 0.3, 0.5, s, 0, /*need_weights=*/true);
  ASSERT_TRUE(r.weights.defined());
  EXPECT_EQ(r.weights.sizes(), (std::vector<int64_t>{1, 2, 3, 32}));
  EXPECT_TRUE(close(r.weights.sum(-1), torch::ones({1, 2, 3})));
  // Kept keys: 2 sinks + 4 local per row.
  EXPECT_EQ(r.weights.gt(0).sum().item<int64_t>(), 1 * 2 * 3 * 6);
  // dropout 0.5 applies only in training.
  auto eval = ra.custom_attention(x.q, x.k, x.v, {}, 0.3, 0.5, s, 0);
  EXPECT_TRUE(close(eval.output, r.output));
  torch::manual_seed(0);
  auto train = ra.custom_attention(x.q, x.k, x.v, {}, 0.3, 0.5, s, 0, false, /*training=*/true);
  EXPECT_FALSE(torch::allclose(train.output, eval.output));
}

TEST(ResearchAttention, ReferenceBackendGivesTheSameOutput) {
  auto ra = ResearchAttention::from_json(
      R"([{"type":"sink","sink_size":4},{"type":"oracle_top_k","heavy_size":8}])");
  auto x = random_qkv(1, 4, 4, 4, 128, 16, 11);
  MaskerState s;
  auto fused = ra.custom_attention(x.q, x.k, x.v, {}, 0.25, 0.0, s, 0).output;
  EnvGuard env("ATTNKIT_BACKEND", "reference");
  auto ref = ra.custom_attention(x.q, x.k, x.v, {}, 0.25, 0.0, s, 0).output;
  EXPECT_TRUE(close(fused, ref));
}

}  // namespace
