// Tests for include/attnkit/sparse/sampling_maskers.h: random sampling, MagicPig and adaptive
// sampling (sparse-attention-hub's sampling/test_implementations.py, test_adaptive_sampling.py,
// sampling/test_base.py and the budget-mask tests of test_mask_attention_utils.py, rewritten).
// Expected values come from hand computations or from a naive re-implementation of upstream's
// algorithm with plain torch ops, replaying the global generator where the maskers draw.

#include <attnkit/sparse/masker.h>
#include <attnkit/sparse/research_attention.h>
#include <attnkit/sparse/sampling_maskers.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numbers>
#include <optional>
#include <string>
#include <vector>

#include "sparse/sparse_test_util.h"

namespace {

using attnkit::sparse::test_util::empty_for;
using attnkit::sparse::test_util::error_of;
using attnkit::sparse::test_util::Qkv;
using attnkit::sparse::test_util::random_qkv;

using namespace attnkit::sparse;
using ::testing::HasSubstr;

std::vector<int64_t> shape_of(const Qkv& x) {
  return {x.q.size(0), x.q.size(1), x.q.size(2), x.k.size(2)};
}

// Keys 0 ... n - 1 active at weight 1 in every row (INDEX form).
Mask first_keys(const Qkv& x, int64_t n, torch::Dtype dtype = torch::kFloat) {
  auto cols = torch::arange(n, torch::kLong).expand({x.q.size(0), x.q.size(1), x.q.size(2), n});
  return mask_from_columns(shape_of(x), cols.contiguous(), dtype);
}

Mask run(const Masker& masker, const Qkv& x, const Mask& previous, MaskerState& state,
         const torch::Tensor& attention_mask = {}, double scaling = 1.0,
         std::optional<int64_t> layer = 0) {
  return masker.add_mask(x.k, x.q, x.v, attention_mask, scaling, 0.0, state, previous, layer);
}

Mask run(const Masker& masker, const Qkv& x, const Mask& previous) {
  MaskerState state;
  return run(masker, x, previous, state);
}

void expect_equal(const torch::Tensor& got, const torch::Tensor& want) {
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::equal(got, want)) << "got\n" << got << "\nwant\n" << want;
}

// The keys repeated to the query heads, [B, H, Tk, D].
torch::Tensor repeat_kv(const torch::Tensor& k, int64_t heads) {
  return k.repeat_interleave(heads / k.size(1), 1);
}

// ---- sampling_mask_with_budget ------------------------------------------------------------

TEST(SamplingMaskerBudget, PtrIsCumsumOfBudgetsAndDrawsReplayTheGenerator) {
  auto budgets = torch::tensor({3, 0, 5, 1}, torch::kLong).view({1, 2, 2, 1});
  auto prob = torch::tensor({0.1f, 0.2f, 0.3f, 0.4f}).view({1, 2, 2, 1});
  torch::manual_seed(5);
  Mask m = sampling_mask_with_budget(budgets, prob, /*k_len=*/10, /*start=*/2, /*end=*/7);
  ASSERT_TRUE(m.is_index());
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{1, 2, 2, 10}));
  MaskIndex ix = m.index();
  expect_equal(ix.ptr, torch::tensor({0, 3, 3, 8, 9}, torch::kLong));
  // One draw of all 9 columns, rows in order, each offset by row * k_len.
  torch::manual_seed(5);
  auto cols = torch::randint(2, 7, {9}, torch::kLong);
  auto rows = torch::tensor({0, 0, 0, 2, 2, 2, 2, 2, 3}, torch::kLong);
  expect_equal(ix.indices, cols + rows * 10);
  expect_equal(ix.data, torch::tensor({0.1f, 0.1f, 0.1f, 0.3f, 0.3f, 0.3f, 0.3f, 0.3f, 0.4f}));
  auto col = ix.indices.remainder(10);
  EXPECT_TRUE(col.ge(2).all().item<bool>() && col.lt(7).all().item<bool>());
}

TEST(SamplingMaskerBudget, ZeroAndLargeBudgets) {
  auto zero = torch::zeros({2, 1, 3, 1}, torch::kLong);
  Mask none = sampling_mask_with_budget(zero, torch::full({2, 1, 3, 1}, 0.5), 8, 0, 8);
  EXPECT_EQ(none.index().indices.numel(), 0);
  expect_equal(none.index().ptr, torch::zeros({7}, torch::kLong));
  EXPECT_EQ(none.density(), 0.0);
  // 1000 draws from [0, 4) hit all four keys; duplicates stay as entries (as upstream).
  auto big = torch::full({1, 1, 1, 1}, 1000, torch::kLong);
  Mask all = sampling_mask_with_budget(big, torch::ones({1, 1, 1, 1}), 6, 0, 4, torch::kDouble);
  EXPECT_EQ(all.index().indices.numel(), 1000);
  EXPECT_EQ(all.dtype(), torch::kDouble);
  expect_equal(all.dense().view(-1),
               torch::tensor({1.0, 1.0, 1.0, 1.0, 0.0, 0.0}, torch::kDouble));
  // without_duplicates keeps each column once, sorted, with its weight.
  Mask once = without_duplicates(all);
  ASSERT_TRUE(once.is_index());
  expect_equal(once.index().indices, torch::tensor({0, 1, 2, 3}, torch::kLong));
  expect_equal(once.dense(), all.dense());
}

TEST(SamplingMaskerBudget, Errors) {
  auto b = torch::ones({1, 1, 2, 1}, torch::kLong);
  auto p = torch::ones({1, 1, 2, 1});
  EXPECT_THAT(error_of([&] { sampling_mask_with_budget(b.view({1, 2, 1}), p, 4, 0, 4); }),
              HasSubstr("budgets must be an integer [B, H, Tq, 1] tensor"));
  EXPECT_THAT(error_of([&] { sampling_mask_with_budget(p, p, 4, 0, 4); }),
              HasSubstr("budgets must be an integer"));
  EXPECT_THAT(error_of([&] { sampling_mask_with_budget(b, p.view({1, 2, 1, 1}), 4, 0, 4); }),
              HasSubstr("probability must have the shape of budgets"));
  EXPECT_THAT(error_of([&] { sampling_mask_with_budget(-b, p, 4, 0, 4); }),
              HasSubstr("budgets must be >= 0, got -1"));
  EXPECT_THAT(error_of([&] { sampling_mask_with_budget(b, p, 4, 3, 3); }),
              HasSubstr("need 0 <= start < end <= k_len, got start = 3, end = 3, k_len = 4"));
  EXPECT_THAT(error_of([&] { sampling_mask_with_budget(b, p, 4, 0, 5); }),
              HasSubstr("need 0 <= start < end <= k_len"));
}

// ---- RandomSamplingMasker -----------------------------------------------------------------

TEST(SamplingMaskerRandom, RateMustBeInZeroOne) {
  for (double bad : {0.0, -0.1, 1.5}) {
    EXPECT_THAT(error_of([&] { (void)RandomSamplingMasker(RandomSamplingMaskerOptions(bad)); }),
                HasSubstr("RandomSamplingMasker: sampling_rate must be in (0, 1], got"));
  }
  EXPECT_THAT(error_of([] { (void)RandomSamplingMasker(RandomSamplingMaskerOptions(0.0)); }),
              HasSubstr("must be in (0, 1], got 0"));
  for (double good : {1e-3, 0.5, 1.0}) {
    EXPECT_DOUBLE_EQ(RandomSamplingMasker(RandomSamplingMaskerOptions(good))
                         .options()
                         .sampling_rate(),
                     good);
  }
  RandomSamplingMasker m(RandomSamplingMaskerOptions(0.5));
  EXPECT_EQ(m.type(), "random_sampling");
  EXPECT_EQ(m.kind(), MaskerKind::kSampling);
}

TEST(SamplingMaskerRandom, FullPreviousIsReturned) {
  auto x = random_qkv(1, 2, 2, 3, 16, 4);
  Mask full = Mask::full(shape_of(x));
  EXPECT_TRUE(run(RandomSamplingMasker(RandomSamplingMaskerOptions(0.5)), x, full).is_full());
}

TEST(SamplingMaskerRandom, DrawsIntRateTimesTkKeysPerRowWithWeightRate) {
  // int(0.29 * 100) = 28 (0.29 * 100 = 28.999999999999996): 28 draws per row, with replacement.
  auto x = random_qkv(2, 4, 2, 3, 100, 8);
  RandomSamplingMasker masker(RandomSamplingMaskerOptions(0.29));
  torch::manual_seed(7);
  Mask m = run(masker, x, empty_for(x));
  ASSERT_TRUE(m.is_index());
  torch::manual_seed(7);
  auto cols = torch::randint(0, 100, {2, 4, 3, 28}, torch::kLong);
  auto want = torch::zeros({2, 4, 3, 100}).scatter_(-1, cols, 0.29f);
  expect_equal(m.dense(), want);
  // Each drawn key once (duplicates collapse, as upstream's dense construction), weight = rate.
  MaskIndex ix = m.index();
  EXPECT_EQ(ix.indices.numel(), want.gt(0).sum().item<int64_t>());
  EXPECT_LE(ix.ptr.diff().max().item<int64_t>(), 28);
  expect_equal(ix.data, torch::full({ix.indices.numel()}, 0.29f));
  EXPECT_DOUBLE_EQ(m.density(), want.gt(0).sum().item<double>() / want.numel());
}

TEST(SamplingMaskerRandom, MergeWithPreviousCapsOverlapAtOne) {
  auto x = random_qkv(1, 2, 1, 4, 10, 4);
  RandomSamplingMasker masker(RandomSamplingMaskerOptions(0.5));
  Mask previous = first_keys(x, 2);
  torch::manual_seed(3);
  Mask m = run(masker, x, previous);
  ASSERT_TRUE(m.is_index());
  torch::manual_seed(3);
  auto cols = torch::randint(0, 10, {1, 2, 4, 5}, torch::kLong);
  auto drawn = torch::zeros({1, 2, 4, 10}).scatter_(-1, cols, 0.5f);
  auto want = (previous.dense() + drawn).clamp(0, 1);
  expect_equal(m.dense(), want);
  // Keys 0 and 1 stay at exactly 1 (a drawn one too: 1 + 0.5 capped), the rest are 0 or 0.5.
  EXPECT_TRUE(m.dense().narrow(-1, 0, 2).eq(1).all().item<bool>());
  auto rest = m.dense().narrow(-1, 2, 8);
  EXPECT_TRUE((rest.eq(0) | rest.eq(0.5)).all().item<bool>());
  // A DENSE previous mask gives the same values in DENSE form.
  torch::manual_seed(3);
  Mask d = run(masker, x, Mask::from_dense(shape_of(x), previous.dense()));
  ASSERT_TRUE(d.is_dense());
  expect_equal(d.dense(), want);
}

TEST(SamplingMaskerRandom, SeedReproducibility) {
  auto x = random_qkv(1, 2, 2, 3, 32, 4);
  RandomSamplingMasker masker(RandomSamplingMaskerOptions(0.25));
  torch::manual_seed(11);
  Mask a = run(masker, x, empty_for(x));
  torch::manual_seed(11);
  Mask b = run(masker, x, empty_for(x));
  torch::manual_seed(12);
  Mask c = run(masker, x, empty_for(x));
  expect_equal(a.dense(), b.dense());
  EXPECT_FALSE(torch::equal(a.dense(), c.dense()));
}

TEST(SamplingMaskerRandom, NothingDrawnReturnsPrevious) {
  // int(0.05 * 10) = 0 keys: upstream fails on the empty draw; here nothing is added.
  auto x = random_qkv(1, 1, 1, 2, 10, 4);
  RandomSamplingMasker masker(RandomSamplingMaskerOptions(0.05));
  EXPECT_TRUE(run(masker, x, empty_for(x)).is_empty());
  Mask previous = first_keys(x, 3);
  expect_equal(run(masker, x, previous).dense(), previous.dense());
}

// ---- MagicPigMasker -----------------------------------------------------------------------

MagicPigMaskerOptions pig(int64_t l, int64_t k, bool center = true,
                          const std::string& packing = "int64", int64_t seed = 42) {
  MagicPigMaskerOptions o(l, k);
  o.center(center).packing(packing).seed(seed);
  return o;
}

TEST(SamplingMaskerMagicPig, ConfigErrors) {
  EXPECT_THAT(error_of([] { (void)MagicPigMasker(pig(0, 4)); }),
              HasSubstr("MagicPigMasker: lsh_l must be > 0, got 0"));
  EXPECT_THAT(error_of([] { (void)MagicPigMasker(pig(4, -1)); }),
              HasSubstr("MagicPigMasker: lsh_k must be > 0, got -1"));
  EXPECT_THAT(error_of([] { (void)MagicPigMasker(pig(4, 4, true, "int32")); }),
              HasSubstr("MagicPigMasker: packing must be \"int64\" or \"float32\", got \"int32\""));
  EXPECT_THAT(error_of([] { (void)MagicPigMasker(pig(4, 65)); }),
              HasSubstr("MagicPigMasker: lsh_k must be <= 64 with \"int64\" packing, got 65"));
  EXPECT_NO_THROW(MagicPigMasker(pig(4, 65, true, "float32")));
  EXPECT_NO_THROW(MagicPigMasker(pig(4, 64)));
  // Upstream's "seed cannot be None": in JSON a null seed is not an integer.
  EXPECT_THAT(error_of([] {
                make_masker(R"({"type": "magic_pig", "lsh_l": 4, "lsh_k": 4, "seed": null})");
              }),
              HasSubstr("\"seed\" expected an integer, got null"));
}

TEST(SamplingMaskerMagicPig, MipsTransformByHand) {
  // Keys (3, 4), (0, 1), (0, 0): norms 5, 1, 0, so M = 5.
  auto keys = torch::tensor({3.0, 4.0, 0.0, 1.0, 0.0, 0.0}, torch::kDouble).view({1, 1, 3, 2});
  auto queries = torch::tensor({3.0, 4.0, -2.0, 0.0}, torch::kDouble).view({1, 1, 2, 2});
  auto x = MagicPigMasker::transform_for_mips(keys, queries);
  auto want_k = torch::tensor({0.6, 0.8, 0.0,  //
                               0.0, 0.2, std::sqrt(24.0) / 5.0,  //
                               0.0, 0.0, 1.0},
                              torch::kDouble)
                    .view({1, 1, 3, 3});
  auto want_q = torch::tensor({3.0 / (5.0 + 1e-8), 4.0 / (5.0 + 1e-8), 0.0,  //
                               -2.0 / (2.0 + 1e-8), 0.0, 0.0},
                              torch::kDouble)
                    .view({1, 1, 2, 3});
  EXPECT_TRUE(torch::allclose(x.keys, want_k, 0, 1e-15)) << x.keys;
  EXPECT_TRUE(torch::allclose(x.queries, want_q, 0, 1e-15)) << x.queries;
  // Every k^ has norm 1 (keys on the unit sphere), q^ norm ~1.
  EXPECT_TRUE(torch::allclose(x.keys.norm(2, {-1}), torch::ones({1, 1, 3}, torch::kDouble)));
  // All-zero keys (M = 0): k^ = [0, 0, 1] instead of upstream's NaN.
  auto z = MagicPigMasker::transform_for_mips(torch::zeros({1, 1, 2, 2}), torch::ones({1, 1, 1, 2}));
  expect_equal(z.keys, torch::tensor({0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 1.0f}).view({1, 1, 2, 3}));
}

TEST(SamplingMaskerMagicPig, CollisionProbabilityFormula) {
  MagicPigMasker masker(pig(3, 2));  // L = 3, K = 2
  // Query (1, 0, 0) against keys: same direction, opposite, orthogonal, at 60 degrees.
  MagicPigMasker::MipsVectors x;
  x.queries = torch::tensor({1.0, 0.0, 0.0}, torch::kDouble).view({1, 1, 1, 3});
  x.keys = torch::tensor({1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0,
                          std::sqrt(0.75)},
                         torch::kDouble)
               .view({1, 1, 4, 3});
  auto p = masker.collision_probability(x).view(-1);
  // p = 1 - (1 - (1 - theta / pi)^K)^L
  auto formula = [](double theta) {
    return 1.0 - std::pow(1.0 - std::pow(1.0 - theta / std::numbers::pi, 2), 3);
  };
  // (The 1e-8 in the normalisations moves cos by ~1e-8, hence the tolerances.)
  EXPECT_NEAR(p[0].item<double>(), 1.0, 1e-7);
  EXPECT_NEAR(p[1].item<double>(), 0.0, 1e-7);
  EXPECT_NEAR(p[2].item<double>(), 0.578125, 1e-12);  // 1 - (1 - 1/4)^3, cos exactly 0
  EXPECT_NEAR(p[3].item<double>(), formula(std::numbers::pi / 3), 1e-7);
  EXPECT_NEAR(formula(std::numbers::pi / 3), 1.0 - std::pow(1.0 - 4.0 / 9.0, 3), 1e-15);
}

TEST(SamplingMaskerMagicPig, SignaturesPackBitsByHand) {
  // L = 2 tables of K = 2 bits over 2-D vectors; projection columns (1,0), (0,1), (-1,0), (1,1).
  auto r = torch::tensor({1.0f, 0.0f, -1.0f, 1.0f, 0.0f, 1.0f, 0.0f, 1.0f}).view({2, 4});
  auto v = torch::tensor({2.0f, -3.0f, -1.0f, 2.0f}).view({1, 1, 2, 2});
  // (2, -3): signs +, -, -, -  -> bits 1,0 | 0,0 -> tables 1, 0
  // (-1, 2): signs -, +, +, +  -> bits 0,1 | 1,1 -> tables 2, 3
  auto packed = MagicPigMasker(pig(2, 2)).signatures(v, r);
  EXPECT_EQ(packed.scalar_type(), torch::kLong);
  expect_equal(packed, torch::tensor({1, 0, 2, 3}, torch::kLong).view({1, 1, 2, 2}));
  auto signs = MagicPigMasker(pig(2, 2, true, "float32")).signatures(v, r);
  expect_equal(signs, torch::tensor({1.0f, -1.0f, -1.0f, -1.0f, -1.0f, 1.0f, 1.0f, 1.0f})
                          .view({1, 1, 2, 4}));
  // Matching: vector 0 against itself and vector 1, per packing.
  expect_equal(MagicPigMasker(pig(2, 2)).matches(packed, packed),
               torch::tensor({true, false, false, true}).view({1, 1, 2, 2}));
  expect_equal(MagicPigMasker(pig(2, 2, true, "float32")).matches(signs, signs),
               torch::tensor({true, false, false, true}).view({1, 1, 2, 2}));
}

TEST(SamplingMaskerMagicPig, ProjectionsAreSeededWithSeedPlusLayer) {
  // Python: torch.randn(2, 4, generator=torch.Generator().manual_seed(43))
  auto want = torch::tensor({-0.6484010815620422f, -0.7058414220809937f, 0.6432183980941772f,
                             1.4787991046905518f, 1.1918498277664185f, -0.14461655914783478f,
                             0.48471593856811523f, 0.6921041011810303f})
                  .view({2, 4});
  auto r = MagicPigMasker(pig(2, 2, true, "int64", 42)).projection(/*layer=*/1, 2, torch::kFloat);
  EXPECT_TRUE(torch::allclose(r, want, 0, 1e-7)) << r;
  expect_equal(MagicPigMasker(pig(2, 2, true, "int64", 43)).projection(0, 2, torch::kFloat), r);
  // The global generator is neither used nor advanced.
  torch::manual_seed(1);
  auto before = torch::rand({1});
  torch::manual_seed(1);
  MagicPigMasker(pig(2, 2)).projection(0, 2, torch::kFloat);
  expect_equal(torch::rand({1}), before);
}

// Upstream's MagicPig, naively, on double tensors: the DENSE mask match * p for a given key mean
// (undefined: no centring) and projection R. int64 packing compares bits (sign > 0), float32
// compares signs (a 0 never matches); random data has no zero sign, so both agree.
torch::Tensor naive_magic_pig(const Qkv& x, int64_t L, int64_t K, const torch::Tensor& mean,
                              const torch::Tensor& r) {
  const int64_t H = x.q.size(1);
  auto k = repeat_kv(x.k, H).to(torch::kDouble);
  auto q = x.q.to(torch::kDouble);
  if (mean.defined()) {
    k = k - mean;
    q = q - mean;
  }
  auto qn = q.norm(2, {-1}, true);
  auto q_hat = torch::cat({q / (qn + 1e-8), torch::zeros_like(qn)}, -1);
  auto kn = k.norm(2, {-1}, true);
  auto big = kn.max();
  auto k_hat = torch::cat({k / big, (big * big - kn * kn).sqrt() / big}, -1);
  auto cos = torch::matmul(q_hat / (q_hat.norm(2, {-1}, true) + 1e-8),
                           (k_hat / (k_hat.norm(2, {-1}, true) + 1e-8)).transpose(-2, -1))
                 .clamp(-1, 1);
  auto p = 1 - (1 - (1 - cos.acos() / std::numbers::pi).pow(K)).pow(L);
  auto sq = torch::matmul(q_hat, r.to(torch::kDouble)).gt(0);  // [B, H, Tq, L*K]
  auto sk = torch::matmul(k_hat, r.to(torch::kDouble)).gt(0);  // [B, H, Tk, L*K]
  auto match = torch::zeros_like(p, torch::kBool);
  const int64_t B = x.q.size(0), Tq = x.q.size(2), Tk = x.k.size(2);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t j = 0; j < Tk; ++j)
          for (int64_t t = 0; t < L; ++t) {
            auto a = sq[b][h][i].narrow(0, t * K, K);
            auto c = sk[b][h][j].narrow(0, t * K, K);
            if (torch::equal(a, c)) match[b][h][i][j] = true;
          }
  return p * match.to(torch::kDouble);
}

TEST(SamplingMaskerMagicPig, MaskIsMatchTimesProbabilityLikeNaive) {
  auto x = random_qkv(2, 4, 2, 3, 24, 6, 21, torch::kDouble);
  for (const char* packing : {"int64", "float32"}) {
    MagicPigMasker masker(pig(6, 2, true, packing));
    MaskerState state;
    Mask m = run(masker, x, empty_for(x, torch::kDouble), state);
    ASSERT_TRUE(m.is_dense()) << packing;
    auto mean = repeat_kv(x.k, 4).mean(2, true);
    auto want = naive_magic_pig(x, 6, 2, mean, state.get(MagicPigMasker::kProjections, 0));
    EXPECT_TRUE(torch::equal(m.dense().gt(0), want.gt(0))) << packing;
    EXPECT_TRUE(torch::allclose(m.dense(), want, 0, 1e-12)) << packing;
    // Some keys match, not all.
    const double density = m.density();
    EXPECT_GT(density, 0.0) << packing;
    EXPECT_LT(density, 1.0) << packing;
  }
  // Without centring.
  MagicPigMasker plain(pig(6, 2, false));
  MaskerState state;
  Mask m = run(plain, x, empty_for(x, torch::kDouble), state);
  EXPECT_FALSE(state.has(MagicPigMasker::kKeyMean, 0));
  auto want = naive_magic_pig(x, 6, 2, {}, state.get(MagicPigMasker::kProjections, 0));
  EXPECT_TRUE(torch::allclose(m.dense(), want, 0, 1e-12));
}

TEST(SamplingMaskerMagicPig, Int64AndFloat32PackingAgree) {
  auto x = random_qkv(2, 4, 4, 5, 40, 8, 5);
  for (int64_t k : {1, 3, 8}) {
    MaskerState s64, s32;
    Mask a = run(MagicPigMasker(pig(8, k, true, "int64")), x, empty_for(x), s64);
    Mask b = run(MagicPigMasker(pig(8, k, true, "float32")), x, empty_for(x), s32);
    expect_equal(a.dense(), b.dense());
    EXPECT_GT(a.density(), 0.0) << k;
  }
  // 64 bits per table (bit 63 packs to the lowest int64): a query along the longest key's
  // direction hashes like that key in every table, without centring.
  auto keys = torch::randn({1, 1, 6, 4});
  keys[0][0][2].mul_(10.0);  // the longest key
  Qkv y{keys[0][0][2].clone().view({1, 1, 1, 4}), keys, torch::randn({1, 1, 6, 4})};
  MaskerState s64, s32;
  Mask a = run(MagicPigMasker(pig(2, 64, false, "int64")), y, empty_for(y), s64);
  Mask b = run(MagicPigMasker(pig(2, 64, false, "float32")), y, empty_for(y), s32);
  expect_equal(a.dense(), b.dense());
  EXPECT_GT(a.dense()[0][0][0][2].item<float>(), 0.9f);
}

TEST(SamplingMaskerMagicPig, CachesMeanProjectionsAndSignaturesPerLayer) {
  const int64_t L = 4, K = 3;
  MagicPigMasker masker(pig(L, K));
  auto x = random_qkv(1, 2, 1, 2, 8, 4, 9, torch::kDouble);
  MaskerState state;
  run(masker, x, empty_for(x, torch::kDouble), state, {}, 1.0, /*layer=*/3);
  EXPECT_EQ(state.size(), 3u);
  ASSERT_TRUE(state.has(MagicPigMasker::kKeyMean, 3));
  ASSERT_TRUE(state.has(MagicPigMasker::kProjections, 3));
  ASSERT_TRUE(state.has(MagicPigMasker::kKeySignatures, 3));
  auto mean = state.get(MagicPigMasker::kKeyMean, 3);
  auto proj = state.get(MagicPigMasker::kProjections, 3);
  auto sigs = state.get(MagicPigMasker::kKeySignatures, 3);
  EXPECT_TRUE(torch::allclose(mean, repeat_kv(x.k, 2).mean(2, true), 0, 1e-15));
  expect_equal(proj, masker.projection(3, 5, torch::kDouble));
  EXPECT_EQ(sigs.sizes(), (std::vector<int64_t>{1, 2, 8, L}));

  // The next decoding step: two more keys, new queries. The mean and the projections are
  // reused, the 8 cached signatures kept and 2 appended. The new keys lie near the mean, so the
  // longest centred key (M) is unchanged and a fresh naive hash of all 10 keys agrees with the
  // cached one.
  auto more = x.k.mean(2, true).expand({1, 1, 2, 4}) + 0.05 * torch::randn({1, 1, 2, 4},
                                                                         torch::kDouble);
  Qkv y{torch::randn({1, 2, 1, 4}, torch::kDouble), torch::cat({x.k, more}, 2),
        torch::cat({x.v, more}, 2)};
  Mask m = run(masker, y, empty_for(y, torch::kDouble), state, {}, 1.0, 3);
  EXPECT_EQ(state.size(), 3u);
  expect_equal(state.get(MagicPigMasker::kKeyMean, 3), mean);
  expect_equal(state.get(MagicPigMasker::kProjections, 3), proj);
  auto sigs2 = state.get(MagicPigMasker::kKeySignatures, 3);
  EXPECT_EQ(sigs2.sizes(), (std::vector<int64_t>{1, 2, 10, L}));
  expect_equal(sigs2.narrow(2, 0, 8), sigs);
  // The probabilities use the cached (first call's) mean, not the mean of the 10 keys.
  auto want = naive_magic_pig(y, L, K, mean, proj);
  EXPECT_TRUE(torch::equal(m.dense().gt(0), want.gt(0)));
  EXPECT_TRUE(torch::allclose(m.dense(), want, 0, 1e-12));
  // A stored projection is used as is: with a zero projection every sign is 0, which packs to
  // all-zero bits, so every key matches every query (weight p).
  MaskerState fixed;
  fixed.set(MagicPigMasker::kProjections, 0, torch::zeros({5, L * K}, torch::kDouble));
  Mask all = run(masker, x, empty_for(x, torch::kDouble), fixed);
  EXPECT_TRUE(all.dense().gt(0).all().item<bool>());
  EXPECT_TRUE(torch::allclose(all.dense(), naive_magic_pig(x, L, K, mean, torch::zeros({5, L * K})),
                              0, 1e-12));
  // Fewer keys than cached: an error naming the layer.
  Qkv shorter{x.q, x.k.narrow(2, 0, 6), x.v.narrow(2, 0, 6)};
  EXPECT_THAT(error_of([&] { run(masker, shorter, empty_for(shorter, torch::kDouble), state, {},
                                 1.0, 3); }),
              HasSubstr("layer 3 has 10 cached key signatures but the call has only 6 keys"));
}

TEST(SamplingMaskerMagicPig, LayersSeedsAndLayerIdx) {
  auto x = random_qkv(1, 2, 2, 2, 12, 4);
  MagicPigMasker masker(pig(4, 2));
  MaskerState state;
  run(masker, x, empty_for(x), state, {}, 1.0, 0);
  run(masker, x, empty_for(x), state, {}, 1.0, 1);
  EXPECT_EQ(state.size(), 6u);
  EXPECT_FALSE(torch::equal(state.get(MagicPigMasker::kProjections, 0),
                            state.get(MagicPigMasker::kProjections, 1)));
  // Same seed, fresh state: the same mask; no global generator involved.
  MaskerState s1, s2;
  torch::manual_seed(1);
  Mask a = run(masker, x, empty_for(x), s1);
  torch::manual_seed(2);
  Mask b = run(masker, x, empty_for(x), s2);
  expect_equal(a.dense(), b.dense());
  MaskerState s3;
  Mask c = run(MagicPigMasker(pig(4, 2, true, "int64", 7)), x, empty_for(x), s3);
  EXPECT_FALSE(torch::equal(a.dense(), c.dense()));
  MaskerState s4;
  EXPECT_THAT(error_of([&] { run(masker, x, empty_for(x), s4, {}, 1.0, std::nullopt); }),
              HasSubstr("needs layer_idx"));
}

TEST(SamplingMaskerMagicPig, FullPreviousAndMerge) {
  auto x = random_qkv(1, 2, 1, 3, 16, 4, 4);
  MagicPigMasker masker(pig(8, 2));
  MaskerState s0;
  EXPECT_TRUE(run(masker, x, Mask::full(shape_of(x)), s0).is_full());
  MaskerState s1, s2;
  Mask alone = run(masker, x, empty_for(x), s1);
  Mask previous = first_keys(x, 2);
  Mask merged = run(masker, x, previous, s2);
  ASSERT_TRUE(merged.is_dense());
  expect_equal(merged.dense(), (previous.dense() + alone.dense()).clamp(0, 1));
  EXPECT_TRUE(merged.dense().narrow(-1, 0, 2).eq(1).all().item<bool>());
}

// ---- AdaptiveSamplingMasker ---------------------------------------------------------------

AdaptiveSamplingMaskerOptions adaptive(MaskerSize base, double eps = 0.1, double delta = 0.05,
                                       MaskerSize init = 0, MaskerSize local = 0) {
  return AdaptiveSamplingMaskerOptions(base, eps, delta, init, local);
}

TEST(SamplingMaskerAdaptive, ConfigValidation) {
  EXPECT_NO_THROW(AdaptiveSamplingMasker(adaptive(0.5)));
  EXPECT_NO_THROW(AdaptiveSamplingMasker(adaptive(10)));
  EXPECT_NO_THROW(AdaptiveSamplingMasker(adaptive(0)));
  EXPECT_NO_THROW(AdaptiveSamplingMasker(adaptive(0.0)));
  EXPECT_NO_THROW(AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.05, 1.0, 0.0)));
  EXPECT_THAT(error_of([] { (void)AdaptiveSamplingMasker(adaptive(1.0)); }),
              HasSubstr("AdaptiveSamplingMasker: base_rate_sampling must be in [0, 1) as a "
                        "fraction, got 1.0"));
  EXPECT_THAT(error_of([] { (void)AdaptiveSamplingMasker(adaptive(-1)); }),
              HasSubstr("base_rate_sampling must be >= 0 as a count, got -1"));
  for (double eps : {0.0, 1.0}) {
    EXPECT_THAT(error_of([&] { (void)AdaptiveSamplingMasker(adaptive(0.5, eps)); }),
                HasSubstr("AdaptiveSamplingMasker: epsilon must be in (0, 1), got"));
  }
  for (double delta : {0.0, 1.0}) {
    EXPECT_THAT(error_of([&] { (void)AdaptiveSamplingMasker(adaptive(0.5, 0.1, delta)); }),
                HasSubstr("AdaptiveSamplingMasker: delta must be in (0, 1), got"));
  }
  EXPECT_THAT(error_of([] { (void)AdaptiveSamplingMasker(adaptive(0.5, 0.1, 0.05, -1, 0)); }),
              HasSubstr("init_offset must be >= 0 as a count, got -1"));
  EXPECT_THAT(error_of([] { (void)AdaptiveSamplingMasker(adaptive(0.5, 0.1, 0.05, 0, -1)); }),
              HasSubstr("local_offset must be >= 0 as a count, got -1"));
  EXPECT_THAT(error_of([] { (void)AdaptiveSamplingMasker(adaptive(0.5, 0.1, 0.05, 0, 1.5)); }),
              HasSubstr("local_offset must be in [0, 1] as a fraction, got 1.5"));
  AdaptiveSamplingMasker m(adaptive(0.1));
  EXPECT_EQ(m.type(), "adaptive_sampling");
  EXPECT_EQ(m.kind(), MaskerKind::kSampling);
}

TEST(SamplingMaskerAdaptive, DeltaPpfIsTheNormalQuantile) {
  // scipy.stats.norm.ppf(0.95) = 1.6448536269514722, norm.ppf(0.9) = 1.2815515655446004.
  EXPECT_NEAR(AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.05)).delta_ppf(), 1.6448536269514722,
              1e-12);
  EXPECT_NEAR(AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.1)).delta_ppf(), 1.2815515655446004,
              1e-12);
  EXPECT_NEAR(AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.5)).delta_ppf(), 0.0, 1e-15);
}

TEST(SamplingMaskerAdaptive, SamplingRangeAndBaseSampleCount) {
  auto range = [](MaskerSize init, MaskerSize local, int64_t tk) {
    auto r = AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.05, init, local)).sampling_range(tk);
    return std::vector<int64_t>{r.start, r.end, r.size};
  };
  EXPECT_EQ(range(0, 0, 16), (std::vector<int64_t>{0, 16, 16}));
  EXPECT_EQ(range(2, 3, 16), (std::vector<int64_t>{2, 13, 11}));
  EXPECT_EQ(range(10, 10, 16), (std::vector<int64_t>{10, 6, -4}));
  // int(0.1 * 37) = 3, 37 - int(0.2 * 37) = 30.
  EXPECT_EQ(range(0.1, 0.2, 37), (std::vector<int64_t>{3, 30, 27}));
  EXPECT_EQ(AdaptiveSamplingMasker(adaptive(0.1)).base_sample_count(1000), 100);
  EXPECT_EQ(AdaptiveSamplingMasker(adaptive(5)).base_sample_count(16), 5);
  EXPECT_EQ(AdaptiveSamplingMasker(adaptive(0.01)).base_sample_count(100), 2);  // max(2, 1)
  EXPECT_EQ(AdaptiveSamplingMasker(adaptive(1)).base_sample_count(100), 2);
}

TEST(SamplingMaskerAdaptive, BudgetFormulaByHand) {
  AdaptiveSamplingMasker masker(adaptive(0.1, 0.1, 0.05));
  const double ppf = masker.delta_ppf();
  const int64_t R = 100;
  std::vector<double> sigma = {0.01, 0.02, 0.5, 1e-8, 1.0};
  std::vector<double> den = {10.0, 5.0, 20.0, 1e3, 0.0};
  auto budget = masker.adaptive_budget(torch::tensor(sigma, torch::kDouble).view({1, 1, 5, 1}),
                                       torch::tensor(den, torch::kDouble).view({1, 1, 5, 1}), R);
  EXPECT_EQ(budget.scalar_type(), torch::kLong);
  std::vector<int64_t> want;
  for (size_t i = 0; i < sigma.size(); ++i) {
    const double b = std::pow(ppf * sigma[i] * R / std::max(0.1 * den[i], 1e-8), 2);
    want.push_back(static_cast<int64_t>(std::min(std::max(b, 1.0), double(R))));
  }
  // By hand: (1.64485 * 0.01 * 100 / 1)^2 = 2.71 -> 2; (1.64485 * 0.02 * 100 / 0.5)^2 = 43.29
  // -> 43; 1691 -> 100; ~0 -> 1; den 0 -> error floor 1e-8 -> 100.
  EXPECT_EQ(want, (std::vector<int64_t>{2, 43, 100, 1, 100}));
  expect_equal(budget.view(-1), torch::tensor(want, torch::kLong));
}

TEST(SamplingMaskerAdaptive, EarlyExits) {
  auto x = random_qkv(1, 2, 2, 3, 16, 4);
  Mask full = Mask::full(shape_of(x));
  EXPECT_TRUE(run(AdaptiveSamplingMasker(adaptive(0.1)), x, full).is_full());
  // base_rate_sampling 0 (count or fraction): the previous mask, whatever it is.
  Mask dense = Mask::from_dense(shape_of(x), first_keys(x, 2).dense());
  for (MaskerSize zero : {MaskerSize(0), MaskerSize(0.0)}) {
    AdaptiveSamplingMasker off(adaptive(zero));
    EXPECT_TRUE(run(off, x, empty_for(x)).is_empty());
    Mask same = run(off, x, dense);
    ASSERT_TRUE(same.is_dense());
    expect_equal(same.dense(), dense.dense());
  }
  // Sampling range < 2: FULL.
  EXPECT_TRUE(run(AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.05, 10, 10)), x, empty_for(x))
                  .is_full());
  EXPECT_TRUE(run(AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.05, 8, 7)), x, empty_for(x))
                  .is_full());  // R = 1
  EXPECT_FALSE(run(AdaptiveSamplingMasker(adaptive(0.1, 0.1, 0.05, 7, 7)), x, empty_for(x))
                   .is_full());  // R = 2
}

// Upstream's AdaptiveSampling, naively, replaying the global generator from `seed`: the dense
// [B, H, Tq, Tk] values of the mask it returns, and the budgets through `budgets`.
torch::Tensor naive_adaptive(const Qkv& x, const torch::Tensor& am, double scaling,
                             const Mask& previous, double eps, double delta_ppf, int64_t start,
                             int64_t end, int64_t n_b, uint64_t seed, torch::Tensor* budgets) {
  const int64_t B = x.q.size(0), H = x.q.size(1), Tq = x.q.size(2), Tk = x.k.size(2);
  const int64_t R = end - start;
  auto s = torch::matmul(x.q, repeat_kv(x.k, H).transpose(-2, -1)) * scaling;
  if (am.defined()) s = s + am;
  auto e = (s - std::get<0>(s.max(-1, true))).exp();
  auto prev = previous.dense().to(e.scalar_type());
  // apply_inv_mask_sum: x * (1 / (m + 1e-6)) where m != 0 (empty previous: plain row sum).
  auto inv = [&](const torch::Tensor& m) {
    return torch::where(m.ne(0), e * (1.0 / (m + 1e-6)), torch::zeros_like(e)).sum(-1, true);
  };
  auto static_den = previous.is_empty() ? e.sum(-1, true) : inv(prev);
  torch::manual_seed(seed);
  auto base = torch::randint(start, end, {B, H, Tq, n_b}, torch::kLong);
  auto sigma = e.gather(-1, base).std(-1, true, true).clamp_min(1e-8);
  auto base_dense = torch::zeros_like(e).scatter_(-1, base, double(n_b) / double(R));
  auto den = static_den + inv(base_dense);
  auto budget = ((delta_ppf * sigma * double(R)) / (eps * den).clamp_min(1e-8))
                    .pow(2)
                    .clamp(1.0, double(R))
                    .to(torch::kLong)
                    .clamp(n_b, R);
  *budgets = budget;
  const int64_t total = budget.sum().item<int64_t>();
  auto cols = torch::randint(start, end, {total}, torch::kLong);
  auto drawn = torch::zeros_like(e);
  auto flat = budget.view(-1);
  int64_t at = 0;
  for (int64_t row = 0; row < B * H * Tq; ++row) {
    const int64_t n = flat[row].item<int64_t>();
    // budget / R: a float32 division, as torch's long / int.
    const float p = static_cast<float>(n) / static_cast<float>(R);
    for (int64_t j = 0; j < n; ++j) {
      drawn.view({-1, Tk})[row][cols[at + j].item<int64_t>()] = static_cast<double>(p);
    }
    at += n;
  }
  return previous.is_empty() ? drawn : (prev + drawn).clamp(0, 1);
}

TEST(SamplingMaskerAdaptive, AddMaskMatchesNaiveReplay) {
  // B=1, H=4 over 2 kv heads, Tq=3, Tk=48, D=8, float64; range [4, 44): R = 40, n_b = 4.
  auto x = random_qkv(1, 4, 2, 3, 48, 8, 31, torch::kDouble);
  auto am = torch::randn({1, 1, 3, 48}, torch::kDouble).mul(0.5);
  const double eps = 0.2, scaling = 0.35;
  AdaptiveSamplingMasker masker(adaptive(0.1, eps, 0.1, 4, 4));
  for (bool with_sinks : {false, true}) {
    Mask previous = with_sinks ? first_keys(x, 3, torch::kDouble) : empty_for(x, torch::kDouble);
    torch::manual_seed(99);
    MaskerState state;
    Mask m = run(masker, x, previous, state, am, scaling);
    ASSERT_TRUE(m.is_index()) << with_sinks;
    torch::Tensor budgets;
    auto want = naive_adaptive(x, am, scaling, previous, eps, masker.delta_ppf(), 4, 44, 4, 99,
                               &budgets);
    EXPECT_TRUE(torch::equal(m.dense().gt(0), want.gt(0))) << with_sinks;
    EXPECT_TRUE(torch::allclose(m.dense(), want, 0, 1e-7)) << with_sinks;
    // Budgets lie in [n_b, R]; every row's sampled weight is its budget / R.
    EXPECT_TRUE(budgets.ge(4).all().item<bool>() && budgets.le(40).all().item<bool>());
    // The budgets vary between rows (the test is not all clamps).
    EXPECT_GT(budgets.max().item<int64_t>(), budgets.min().item<int64_t>()) << budgets.view(-1);
    EXPECT_LT(budgets.min().item<int64_t>(), 40) << budgets.view(-1);
    auto sampled = m.dense().narrow(-1, 3, 41);  // keys 3..43: no sink, inside the range
    auto expect_p = (budgets.to(torch::kFloat) / 40.0f).to(torch::kDouble).expand_as(sampled);
    EXPECT_TRUE((sampled.eq(0) | sampled.eq(expect_p)).all().item<bool>()) << with_sinks;
    // Nothing outside [4, 44) is sampled (the base sample is not kept either).
    EXPECT_TRUE(m.dense().narrow(-1, 44, 4).eq(0).all().item<bool>());
    // Each drawn key counted once.
    EXPECT_EQ(m.index().indices.numel(), m.dense().gt(0).sum().item<int64_t>());
  }
}

TEST(SamplingMaskerAdaptive, SeedReproducibility) {
  auto x = random_qkv(1, 2, 2, 4, 64, 8, 2);
  AdaptiveSamplingMasker masker(adaptive(0.05, 0.3, 0.3, 0.1, 0.1));
  torch::manual_seed(4);
  Mask a = run(masker, x, empty_for(x));
  torch::manual_seed(4);
  Mask b = run(masker, x, empty_for(x));
  expect_equal(a.dense(), b.dense());
}

TEST(SamplingMaskerAdaptive, NumericalStability) {
  // Huge scores (upstream's test: q and k scaled by 1000), and a query whose keys are all
  // masked out: finite weights in (0, 1], no NaN.
  auto x = random_qkv(2, 4, 4, 8, 16, 32, 8);
  x.q = x.q * 1000;
  x.k = x.k * 1000;
  auto am = torch::zeros({2, 1, 8, 16});
  am.select(2, 0).fill_(-std::numeric_limits<float>::infinity());
  AdaptiveSamplingMasker masker(adaptive(0.1));
  torch::manual_seed(0);
  for (const auto& mask : {torch::Tensor(), am}) {
    MaskerState state;
    Mask m = run(masker, x, empty_for(x), state, mask);
    auto d = m.dense();
    EXPECT_TRUE(torch::isfinite(d).all().item<bool>());
    EXPECT_TRUE(d.le(1).all().item<bool>() && d.ge(0).all().item<bool>());
    EXPECT_GT(m.density(), 0.0);
  }
  // exp_scores: a fully masked row is zeros, not NaN.
  MaskerInputs in;
  in.queries = x.q;
  in.keys = x.k;
  in.attention_mask = am;
  in.batch = 2;
  in.heads = in.kv_heads = 4;
  in.q_len = 8;
  in.k_len = 16;
  auto e = AdaptiveSamplingMasker::exp_scores(in);
  EXPECT_TRUE(e.select(2, 0).eq(0).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(e).all().item<bool>());
  EXPECT_TRUE(std::get<0>(e.narrow(2, 1, 7).max(-1)).eq(1).all().item<bool>());
}

// ---- registry and research attention ------------------------------------------------------

TEST(SamplingMaskerRegistry, JsonCreatesAllThree) {
  auto rs = std::dynamic_pointer_cast<const RandomSamplingMasker>(
      make_masker(R"({"type": "random_sampling", "sampling_rate": 0.25})"));
  ASSERT_TRUE(rs);
  EXPECT_DOUBLE_EQ(rs->options().sampling_rate(), 0.25);
  EXPECT_EQ(rs->kind(), MaskerKind::kSampling);

  auto mp = std::dynamic_pointer_cast<const MagicPigMasker>(
      make_masker(R"({"type": "magic_pig", "lsh_l": 16, "lsh_k": 4})"));
  ASSERT_TRUE(mp);
  EXPECT_EQ(mp->options().lsh_l(), 16);
  EXPECT_EQ(mp->options().lsh_k(), 4);
  EXPECT_TRUE(mp->options().center());
  EXPECT_EQ(mp->options().packing(), "int64");
  EXPECT_EQ(mp->options().seed(), 42);
  auto mp2 = std::dynamic_pointer_cast<const MagicPigMasker>(make_masker(
      R"({"type": "magic_pig", "lsh_l": 8, "lsh_k": 70, "center": false, "packing": "float32", "seed": 7})"));
  ASSERT_TRUE(mp2);
  EXPECT_FALSE(mp2->options().center());
  EXPECT_EQ(mp2->options().packing(), "float32");
  EXPECT_EQ(mp2->options().seed(), 7);

  auto ad = std::dynamic_pointer_cast<const AdaptiveSamplingMasker>(make_masker(
      R"({"type": "adaptive_sampling", "base_rate_sampling": 0.05, "epsilon": 0.25, "delta": 0.25, "init_offset": 128, "local_offset": 0.1})"));
  ASSERT_TRUE(ad);
  EXPECT_TRUE(ad->options().base_rate_sampling().is_fraction());
  EXPECT_DOUBLE_EQ(ad->options().base_rate_sampling().value(), 0.05);
  EXPECT_DOUBLE_EQ(ad->options().epsilon(), 0.25);
  EXPECT_DOUBLE_EQ(ad->options().delta(), 0.25);
  EXPECT_FALSE(ad->options().init_offset().is_fraction());
  EXPECT_EQ(ad->options().init_offset().resolve(1000), 128);
  EXPECT_TRUE(ad->options().local_offset().is_fraction());

  // Errors from JSON: a validation error, a missing key, an unknown key.
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "random_sampling", "sampling_rate": 0})"); }),
              HasSubstr("sampling_rate must be in (0, 1], got 0"));
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "magic_pig", "lsh_l": 4})"); }),
              HasSubstr("missing \"lsh_k\""));
  EXPECT_THAT(error_of([] {
                make_masker(R"({"type": "random_sampling", "sampling_rate": 0.1, "rate": 1})");
              }),
              HasSubstr("unknown key \"rate\""));
  EXPECT_THAT(error_of([] {
                make_masker(R"({"type": "adaptive_sampling", "base_rate_sampling": 0.1,
                               "epsilon": 0.1, "delta": 0.1, "init_offset": 0})");
              }),
              HasSubstr("missing \"local_offset\""));
}

TEST(SamplingMaskerResearchAttention, RejectsTwoSamplingMaskers) {
  auto rs = std::make_shared<RandomSamplingMasker>(RandomSamplingMaskerOptions(0.5));
  auto mp = std::make_shared<MagicPigMasker>(MagicPigMaskerOptions(4, 4));
  EXPECT_THAT(error_of([&] { ResearchAttention(std::vector<MaskerPtr>{rs, mp}); }),
              HasSubstr("at most one sampling masker is allowed, got 2"));
  EXPECT_THAT(error_of([] {
                ResearchAttention::from_json(
                    R"([{"type": "random_sampling", "sampling_rate": 0.1},
                        {"type": "adaptive_sampling", "base_rate_sampling": 0.1, "epsilon": 0.1,
                         "delta": 0.1, "init_offset": 0, "local_offset": 0}])");
              }),
              HasSubstr("at most one sampling masker is allowed, got 2"));
  // One sampling masker among fixed ones is fine, and attention under its mask is finite.
  auto ra = ResearchAttention::from_json(
      R"([{"type": "sink", "sink_size": 4}, {"type": "local", "window_size": 8},
          {"type": "adaptive_sampling", "base_rate_sampling": 0.1, "epsilon": 0.25,
           "delta": 0.25, "init_offset": 4, "local_offset": 8}])");
  EXPECT_EQ(ra.maskers().size(), 3u);
  auto x = random_qkv(1, 4, 2, 2, 64, 16, 6);
  MaskerState state;
  torch::manual_seed(0);
  auto r = ra.custom_attention(x.q, x.k, x.v, {}, 0.25, 0.0, state, 0);
  EXPECT_EQ(r.output.sizes(), (std::vector<int64_t>{1, 2, 4, 16}));
  EXPECT_TRUE(torch::isfinite(r.output).all().item<bool>());
  // Sinks and windows at 1 (12 keys per row), plus sampled keys in [4, 56).
  auto d = r.mask.dense();
  EXPECT_TRUE(d.narrow(-1, 0, 4).eq(1).all().item<bool>());
  EXPECT_TRUE(d.ge(0).all().item<bool>() && d.le(1).all().item<bool>());
  EXPECT_GT(d.gt(0).sum().item<int64_t>(), 4 * 2 * 12);
}

}  // namespace
