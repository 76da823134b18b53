// Tests for include/attnkit/core/rope.h against plain-loop rotations and inverse frequencies
// written from docs/catalog.md, "Rotary embeddings".

#include <attnkit/core/rope.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace {

using attnkit::RopeChannels;
using attnkit::RopeOptions;
using attnkit::RopeScaling;
using attnkit::RopeStyle;
using attnkit::RotaryEmbedding;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

constexpr double kPi = 3.14159265358979323846;

class RopeTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

// Inverse frequencies of docs/catalog.md, "Rotary embeddings", one loop per scaling. d is the
// rope dim.
std::vector<double> naive_inv_freq(const RopeOptions& o, int64_t d, double* mscale) {
  const int64_t half = d / 2;
  std::vector<double> inv(half);
  double base = o.theta();
  if (o.scaling() == RopeScaling::kNtk) {
    base = o.theta() * std::pow(o.factor(), double(d) / double(d - 2));
  }
  for (int64_t i = 0; i < half; ++i) inv[i] = std::pow(base, -2.0 * i / d);
  *mscale = 1.0;
  if (o.scaling() == RopeScaling::kLinear) {
    for (double& f : inv) f /= o.factor();
  }
  if (o.scaling() == RopeScaling::kYarn) {
    auto c = [&](double r) {
      return d * std::log(o.original_max_position_embeddings() / (2 * kPi * r)) /
             (2 * std::log(o.theta()));
    };
    const double low = std::max(c(o.beta_fast()), 0.0);
    const double high = std::min(c(o.beta_slow()), d / 2.0 - 1);
    for (int64_t i = 0; i < half; ++i) {
      const double ramp = std::min(std::max((i - low) / (high - low), 0.0), 1.0);
      inv[i] = inv[i] * (1 - ramp) + inv[i] / o.factor() * ramp;
    }
    if (o.factor() > 1) *mscale = 0.1 * std::log(o.factor()) + 1;
  }
  return inv;
}

// Rotates x ([B, T, H, D] or [B, T, D]) at positions offset + t with plain loops in double.
torch::Tensor naive_rope(const torch::Tensor& x_in, const RopeOptions& o, int64_t offset) {
  const bool three_d = x_in.dim() == 3;
  torch::Tensor x = (three_d ? x_in.unsqueeze(2) : x_in).to(torch::kDouble).contiguous();
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t rd = o.dim() == 0 ? D : o.dim();
  const int64_t half = rd / 2;
  const int64_t start = o.channels() == RopeChannels::kFirst ? 0 : D - rd;
  double mscale = 1;
  const std::vector<double> inv = naive_inv_freq(o, rd, &mscale);
  torch::Tensor y = x.clone();
  auto xa = x.accessor<double, 4>();
  auto ya = y.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = double(offset + t) * inv[i];
          const double c = std::cos(angle) * mscale, s = std::sin(angle) * mscale;
          const int64_t a = start + (o.style() == RopeStyle::kHalf ? i : 2 * i);
          const int64_t p = start + (o.style() == RopeStyle::kHalf ? i + half : 2 * i + 1);
          ya[b][t][h][a] = xa[b][t][h][a] * c - xa[b][t][h][p] * s;
          ya[b][t][h][p] = xa[b][t][h][p] * c + xa[b][t][h][a] * s;
        }
  return three_d ? y.squeeze(2) : y;
}

std::string describe(const RopeOptions& o) {
  std::ostringstream s;
  s << o;
  return s.str();
}

// Every style x channels x scaling, full and partial, 4-D and 3-D input.
TEST_F(RopeTest, ApplyMatchesNaiveLoops) {
  const int64_t head_dim = 12;
  for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved})
    for (RopeChannels channels : {RopeChannels::kFirst, RopeChannels::kLast})
      for (int64_t dim : {0, 8})
        for (RopeScaling scaling :
             {RopeScaling::kNone, RopeScaling::kLinear, RopeScaling::kNtk, RopeScaling::kYarn}) {
          RopeOptions o = RopeOptions()
                              .dim(dim)
                              .style(style)
                              .channels(channels)
                              .theta(500.0)
                              .scaling(scaling)
                              .factor(4.0)
                              .original_max_position_embeddings(64);
          SCOPED_TRACE(describe(o));
          RotaryEmbedding rope(o, head_dim);
          torch::Tensor x4 = torch::randn({2, 5, 3, head_dim}, torch::kDouble);
          EXPECT_TRUE(torch::allclose(rope.apply(x4, 7), naive_rope(x4, o, 7), 1e-12, 1e-12));
          torch::Tensor x3 = torch::randn({2, 4, head_dim}, torch::kDouble);
          EXPECT_TRUE(torch::allclose(rope.apply(x3, 2), naive_rope(x3, o, 2), 1e-12, 1e-12));
          torch::Tensor xf = torch::randn({1, 3, 2, head_dim});
          torch::Tensor yf = rope.apply(xf, 11);
          ASSERT_EQ(yf.scalar_type(), torch::kFloat);
          EXPECT_TRUE(torch::allclose(yf.to(torch::kDouble), naive_rope(xf, o, 11), 1e-5, 1e-6));
        }
}

TEST_F(RopeTest, BFloat16KeepsDtypeAndIsClose) {
  RopeOptions o = RopeOptions().style(RopeStyle::kInterleaved);
  RotaryEmbedding rope(o, 16);
  torch::Tensor x = torch::randn({2, 6, 2, 16}).to(torch::kBFloat16);
  torch::Tensor y = rope.apply(x, 100);
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(y.to(torch::kDouble), naive_rope(x, o, 100), 1e-2, 1e-2));
}

// <R(p) q, R(p') k> depends only on p - p'.
TEST_F(RopeTest, DotProductDependsOnlyOnPositionDifference) {
  const int64_t head_dim = 16;
  for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved})
    for (RopeScaling scaling : {RopeScaling::kNone, RopeScaling::kYarn}) {
      RopeOptions o = RopeOptions().style(style).scaling(scaling).factor(8.0);
      SCOPED_TRACE(describe(o));
      RotaryEmbedding rope(o, head_dim);
      torch::Tensor q = torch::randn({1, 1, 1, head_dim}, torch::kDouble);
      torch::Tensor k = torch::randn({1, 1, 1, head_dim}, torch::kDouble);
      auto dot = [&](int64_t p, int64_t pk) {
        return (rope.apply(q, p) * rope.apply(k, pk)).sum().item<double>();
      };
      for (int64_t shift : {1, 17, 1000}) {
        EXPECT_NEAR(dot(5, 2), dot(5 + shift, 2 + shift), 1e-9) << "shift " << shift;
        EXPECT_NEAR(dot(0, 9), dot(shift, 9 + shift), 1e-9) << "shift " << shift;
      }
      // ... and does depend on it.
      EXPECT_GT(std::abs(dot(5, 2) - dot(5, 3)), 1e-6);
    }
}

TEST_F(RopeTest, PartialRopeLeavesOtherChannelsUntouched) {
  const int64_t head_dim = 12, rope_dim = 4;
  torch::Tensor x = torch::randn({2, 5, 3, head_dim});
  for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
    SCOPED_TRACE(attnkit::to_string(style));
    RopeOptions first = RopeOptions().dim(rope_dim).style(style).channels(RopeChannels::kFirst);
    torch::Tensor y = RotaryEmbedding(first, head_dim).apply(x, 1);
    EXPECT_TRUE(torch::equal(y.narrow(-1, rope_dim, head_dim - rope_dim),
                             x.narrow(-1, rope_dim, head_dim - rope_dim)));
    EXPECT_FALSE(torch::allclose(y.narrow(-1, 0, rope_dim), x.narrow(-1, 0, rope_dim)));
    // The rotated block is a rope of width rope_dim on those channels alone.
    torch::Tensor alone = RotaryEmbedding(RopeOptions().style(style), rope_dim)
                              .apply(x.narrow(-1, 0, rope_dim).contiguous(), 1);
    EXPECT_TRUE(torch::allclose(y.narrow(-1, 0, rope_dim), alone, 1e-6, 1e-6));

    RopeOptions last = RopeOptions().dim(rope_dim).style(style).channels(RopeChannels::kLast);
    torch::Tensor z = RotaryEmbedding(last, head_dim).apply(x, 1);
    const int64_t nope = head_dim - rope_dim;
    EXPECT_TRUE(torch::equal(z.narrow(-1, 0, nope), x.narrow(-1, 0, nope)));
    EXPECT_FALSE(torch::allclose(z.narrow(-1, nope, rope_dim), x.narrow(-1, nope, rope_dim)));
    torch::Tensor alone_last = RotaryEmbedding(RopeOptions().style(style), rope_dim)
                                   .apply(x.narrow(-1, nope, rope_dim).contiguous(), 1);
    EXPECT_TRUE(torch::allclose(z.narrow(-1, nope, rope_dim), alone_last, 1e-6, 1e-6));
  }
}

// Interleaved pairs (2i, 2i+1) are half pairs (i, i + d/2) after a channel permutation.
TEST_F(RopeTest, StylesAgreeAfterChannelPermutation) {
  const int64_t d = 10;
  std::vector<int64_t> half_from_inter(d);  // half layout channel c holds interleaved channel ...
  for (int64_t i = 0; i < d / 2; ++i) {
    half_from_inter[i] = 2 * i;
    half_from_inter[i + d / 2] = 2 * i + 1;
  }
  std::vector<int64_t> inter_from_half(d);
  for (int64_t c = 0; c < d; ++c) inter_from_half[half_from_inter[c]] = c;
  torch::Tensor to_half = torch::tensor(half_from_inter);
  torch::Tensor to_inter = torch::tensor(inter_from_half);

  torch::Tensor x_inter = torch::randn({2, 7, 3, d}, torch::kDouble);
  torch::Tensor x_half = x_inter.index_select(-1, to_half);
  RotaryEmbedding inter(RopeOptions().style(RopeStyle::kInterleaved), d);
  RotaryEmbedding half(RopeOptions().style(RopeStyle::kHalf), d);
  torch::Tensor y_inter = inter.apply(x_inter, 3);
  torch::Tensor y_half = half.apply(x_half, 3);
  EXPECT_TRUE(torch::allclose(y_half.index_select(-1, to_inter), y_inter, 1e-12, 1e-12));
  // Without the permutation the layouts differ.
  EXPECT_FALSE(torch::allclose(half.apply(x_inter, 3), y_inter, 1e-3, 1e-3));
}

TEST_F(RopeTest, OffsetEqualsSuffixOfLongerSequence) {
  const int64_t T = 9, t0 = 4;
  for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
    SCOPED_TRACE(attnkit::to_string(style));
    RotaryEmbedding rope(RopeOptions().style(style).dim(6).channels(RopeChannels::kLast), 8);
    torch::Tensor x = torch::randn({2, T, 3, 8});
    torch::Tensor full = rope.apply(x, 0).narrow(1, t0, T - t0);
    torch::Tensor suffix = rope.apply(x.narrow(1, t0, T - t0), t0);
    EXPECT_TRUE(torch::allclose(full, suffix, 1e-6, 1e-7));
    // A wrong offset gives a different answer.
    EXPECT_FALSE(torch::allclose(full, rope.apply(x.narrow(1, t0, T - t0), t0 + 1), 1e-3, 1e-3));
  }
}

// d = 4, theta = 10000: inv_freq = [1, 10000^(-1/2)] = [1, 0.01]. x = [1, 2, 3, 4].
TEST_F(RopeTest, HandComputedTinyCase) {
  torch::Tensor x = torch::tensor({1.0, 2.0, 3.0, 4.0}, torch::kDouble).expand({1, 2, 4});
  // Positions 1 and 2 (offset 1, two tokens).
  // half: pairs (x0, x2) at freq 1 and (x1, x3) at freq 0.01:
  //   [1 cos p - 3 sin p, 2 cos .01p - 4 sin .01p, 3 cos p + 1 sin p, 4 cos .01p + 2 sin .01p]
  torch::Tensor half_expected = torch::tensor(
      {{-1.9841106485555495, 1.959900667496664, 2.4623779024123156, 4.019799668334994},
       {-3.1440391170241875, 1.9196053465598233, -0.33914308281574557, 4.039197360052977}},
      torch::kDouble);
  // interleaved: pairs (x0, x1) at freq 1 and (x2, x3) at freq 0.01:
  //   [1 cos p - 2 sin p, 2 cos p + 1 sin p, 3 cos .01p - 4 sin .01p, 4 cos .01p + 3 sin .01p]
  torch::Tensor inter_expected = torch::tensor(
      {{-1.1426396637476532, 1.922075596544176, 2.9598506679133294, 4.029799501669161},
       {-2.234741690198506, 0.0770037537313969, 2.919405353226401, 4.05919602674631}},
      torch::kDouble);
  RotaryEmbedding half(RopeOptions().style(RopeStyle::kHalf).theta(10000), 4);
  RotaryEmbedding inter(RopeOptions().style(RopeStyle::kInterleaved).theta(10000), 4);
  EXPECT_TRUE(torch::allclose(half.inv_freq(), torch::tensor({1.0, 0.01}, torch::kDouble)));
  EXPECT_TRUE(torch::allclose(half.apply(x, 1)[0], half_expected, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(inter.apply(x, 1)[0], inter_expected, 1e-12, 1e-12));
  // Position 0 is the identity.
  EXPECT_TRUE(torch::allclose(half.apply(x, 0)[0][0], x[0][0], 0, 1e-15));
}

struct FreqCase {
  const char* name;
  RopeOptions options;
  int64_t rope_dim;
};

TEST_F(RopeTest, InverseFrequenciesMatchFormulas) {
  const std::vector<FreqCase> cases = {
      {"none", RopeOptions(), 64},
      {"none_theta1e6", RopeOptions().theta(1e6), 10},
      {"linear", RopeOptions().scaling(RopeScaling::kLinear).factor(4), 64},
      {"ntk", RopeOptions().scaling(RopeScaling::kNtk).factor(8), 64},
      {"ntk_small", RopeOptions().scaling(RopeScaling::kNtk).factor(2).theta(500), 6},
      // low = c(32) = 10.47, high = c(1) = 22.5: a ramp strictly inside [0, d/2 - 1].
      {"yarn_inner_ramp", RopeOptions().scaling(RopeScaling::kYarn).factor(4), 64},
      // c(1000) < 0 -> low clamps to 0; c(0.01) > 31 -> high clamps to d/2 - 1.
      {"yarn_clamped",
       RopeOptions().scaling(RopeScaling::kYarn).factor(8).beta_fast(1000).beta_slow(0.01), 64},
      {"yarn_factor1", RopeOptions().scaling(RopeScaling::kYarn).factor(1), 32},
      {"yarn_factor_half", RopeOptions().scaling(RopeScaling::kYarn).factor(0.5), 32},
      {"yarn_short_context",
       RopeOptions().scaling(RopeScaling::kYarn).factor(40).original_max_position_embeddings(256),
       128},
  };
  for (const FreqCase& c : cases) {
    SCOPED_TRACE(c.name);
    double expected_mscale = 0;
    const std::vector<double> expected = naive_inv_freq(c.options, c.rope_dim, &expected_mscale);
    double mscale = -1;
    torch::Tensor inv = attnkit::rope_inverse_frequencies(c.options, c.rope_dim, &mscale);
    ASSERT_EQ(inv.scalar_type(), torch::kDouble);
    ASSERT_EQ(inv.numel(), c.rope_dim / 2);
    for (int64_t i = 0; i < inv.numel(); ++i) {
      EXPECT_NEAR(inv[i].item<double>(), expected[i], 1e-14 * expected[i]) << "i = " << i;
    }
    EXPECT_NEAR(mscale, expected_mscale, 1e-15);
    RopeOptions with_dim = c.options;
    with_dim.dim(c.rope_dim);
    RotaryEmbedding rope(with_dim, c.rope_dim + 2);
    EXPECT_TRUE(torch::allclose(rope.inv_freq(), inv, 0, 0));
    EXPECT_EQ(rope.mscale(), mscale);
    EXPECT_EQ(rope.rope_dim(), c.rope_dim);
  }
  // The YaRN ramp above is really partial, so a floor/ceil on low/high would be caught.
  double ms = 0;
  const auto yarn = naive_inv_freq(cases[5].options, 64, &ms);
  const auto plain = naive_inv_freq(RopeOptions(), 64, &ms);
  EXPECT_GT(yarn[11], plain[11] / 4 * 1.01);
  EXPECT_LT(yarn[11], plain[11] * 0.99);
  EXPECT_DOUBLE_EQ(yarn[10], plain[10]);
  EXPECT_DOUBLE_EQ(yarn[23], plain[23] / 4);
  EXPECT_NEAR(naive_inv_freq(cases[5].options, 64, &ms)[0], 1.0, 0);
  EXPECT_DOUBLE_EQ(ms, 0.1 * std::log(4.0) + 1);
}

TEST_F(RopeTest, ConstructionErrorsNameTheArgument) {
  EXPECT_THAT([] { RotaryEmbedding(RopeOptions().dim(5), 8, "MyAttention"); },
              ThrowsMessage<c10::Error>(
                  AllOf(HasSubstr("MyAttention"), HasSubstr("rope dim"), HasSubstr("even"))));
  EXPECT_THAT([] { RotaryEmbedding(RopeOptions(), 7, "MyAttention"); },
              ThrowsMessage<c10::Error>(AllOf(HasSubstr("rope dim"), HasSubstr("even"))));
  EXPECT_THAT([] { RotaryEmbedding(RopeOptions().dim(10), 8, "MyAttention"); },
              ThrowsMessage<c10::Error>(
                  AllOf(HasSubstr("MyAttention"), HasSubstr("rope dim"), HasSubstr("head_dim"))));
  for (double beta_slow : {32.0, 40.0}) {
    EXPECT_THAT(
        [&] {
          RotaryEmbedding(RopeOptions()
                              .scaling(RopeScaling::kYarn)
                              .factor(4)
                              .beta_fast(32)
                              .beta_slow(beta_slow),
                          64, "MyAttention");
        },
        ThrowsMessage<c10::Error>(
            AllOf(HasSubstr("MyAttention"), HasSubstr("beta_fast"), HasSubstr("beta_slow"))));
  }
  RotaryEmbedding rope(RopeOptions(), 8);
  EXPECT_THAT(
      [&] {
        rope.apply(torch::randn({1, 2, 3, 6}));
      },
      ThrowsMessage<c10::Error>(HasSubstr("head_dim")));
  EXPECT_THAT(
      [&] {
        rope.apply(torch::randn({1, 2, 3, 8}), -1);
      },
      ThrowsMessage<c10::Error>(HasSubstr("offset")));
}

TEST_F(RopeTest, OptionsPrint) {
  EXPECT_EQ(describe(RopeOptions().dim(32)),
            "rope(dim=32, style=half, channels=first, theta=10000, scaling=none)");
  EXPECT_EQ(describe(RopeOptions()
                         .style(RopeStyle::kInterleaved)
                         .channels(RopeChannels::kLast)
                         .scaling(RopeScaling::kYarn)
                         .factor(40)),
            "rope(dim=0, style=interleaved, channels=last, theta=10000, scaling=yarn, factor=40, "
            "beta_fast=32, beta_slow=1, original_max_position_embeddings=4096)");
}

}  // namespace
