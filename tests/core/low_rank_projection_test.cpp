// Tests for include/attnkit/core/low_rank_projection.h: y = up(rms(down(x))) (docs/catalog.md).

#include <attnkit/core/low_rank_projection.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace {

using attnkit::LowRankProjection;
using attnkit::LowRankProjectionOptions;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

class LowRankProjectionTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

// Plain loops in double: h = W_down x; h <- h / sqrt(mean(h^2) + eps) * g; y = W_up h.
torch::Tensor naive_low_rank(const torch::Tensor& x_in,
                             const torch::Tensor& w_down_in,
                             const torch::Tensor& gain_in,
                             const torch::Tensor& w_up_in,
                             double eps) {
  const int64_t in = w_down_in.size(1), r = w_down_in.size(0), out = w_up_in.size(0);
  torch::Tensor x = x_in.to(torch::kDouble).reshape({-1, in}).contiguous();
  torch::Tensor wd = w_down_in.to(torch::kDouble).contiguous();
  torch::Tensor g = gain_in.to(torch::kDouble).contiguous();
  torch::Tensor wu = w_up_in.to(torch::kDouble).contiguous();
  torch::Tensor y = torch::zeros({x.size(0), out}, torch::kDouble);
  auto xa = x.accessor<double, 2>();
  auto wda = wd.accessor<double, 2>();
  auto ga = g.accessor<double, 1>();
  auto wua = wu.accessor<double, 2>();
  auto ya = y.accessor<double, 2>();
  std::vector<double> h(r);
  for (int64_t n = 0; n < x.size(0); ++n) {
    double sum_sq = 0;
    for (int64_t i = 0; i < r; ++i) {
      h[i] = 0;
      for (int64_t j = 0; j < in; ++j) h[i] += wda[i][j] * xa[n][j];
      sum_sq += h[i] * h[i];
    }
    const double inv_rms = 1.0 / std::sqrt(sum_sq / r + eps);
    for (int64_t i = 0; i < r; ++i) h[i] *= inv_rms * ga[i];
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < r; ++i) ya[n][o] += wua[o][i] * h[i];
  }
  auto shape = x_in.sizes().vec();
  shape.back() = out;
  return y.reshape(shape);
}

TEST_F(LowRankProjectionTest, ParameterNamesAndShapes) {
  LowRankProjection proj(/*in_features=*/24, /*bottleneck=*/6, /*out_features=*/10);
  auto params = proj->named_parameters();
  EXPECT_EQ(params.keys(),
            std::vector<std::string>({"down_proj.weight", "norm.weight", "up_proj.weight"}));
  EXPECT_EQ(params["down_proj.weight"].sizes(), torch::IntArrayRef({6, 24}));
  EXPECT_EQ(params["norm.weight"].sizes(), torch::IntArrayRef({6}));
  EXPECT_EQ(params["up_proj.weight"].sizes(), torch::IntArrayRef({10, 6}));
  EXPECT_TRUE(torch::equal(params["norm.weight"], torch::ones({6})));
  EXPECT_EQ(proj->options.norm_eps(), 1e-6);
}

TEST_F(LowRankProjectionTest, ForwardMatchesNaiveComposition) {
  for (double eps : {1e-6, 0.5}) {
    SCOPED_TRACE("eps " + std::to_string(eps));
    LowRankProjection proj(LowRankProjectionOptions(16, 4, 12).norm_eps(eps));
    {
      torch::NoGradGuard no_grad;
      proj->norm->weight.copy_(torch::randn({4}));  // a non-trivial gain
    }
    torch::Tensor x = torch::randn({2, 5, 16}) * 0.2;
    torch::Tensor y = proj(x);
    ASSERT_EQ(y.sizes(), torch::IntArrayRef({2, 5, 12}));
    torch::Tensor expected =
        naive_low_rank(x, proj->down_proj->weight.detach(), proj->norm->weight.detach(),
                       proj->up_proj->weight.detach(), eps);
    EXPECT_TRUE(torch::allclose(y.to(torch::kDouble), expected, 1e-5, 1e-6));
    // Dropping the norm gives a different answer, so the check sees the norm.
    torch::Tensor without_norm = proj->up_proj(proj->down_proj(x)).to(torch::kDouble);
    EXPECT_FALSE(torch::allclose(without_norm, expected, 1e-3, 1e-3));
  }
}

TEST_F(LowRankProjectionTest, GradientsReachEveryParameter) {
  LowRankProjection proj(8, 3, 5);
  proj(torch::randn({4, 8})).pow(2).sum().backward();
  for (const auto& p : proj->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

TEST_F(LowRankProjectionTest, PrettyPrintAndErrors) {
  std::ostringstream s;
  LowRankProjection(LowRankProjectionOptions(32, 8, 16).norm_eps(1e-5))->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::LowRankProjection(in_features=32, bottleneck=8, out_features=16, "
            "norm_eps=1e-05)");
  LowRankProjection proj(8, 3, 5);
  EXPECT_THAT(
      [&] {
        proj(torch::randn({2, 7}));
      },
      ThrowsMessage<c10::Error>(AllOf(HasSubstr("LowRankProjection"), HasSubstr("8"))));
  EXPECT_THAT(
      [] { LowRankProjection(8, 0, 5); },
      ThrowsMessage<c10::Error>(AllOf(HasSubstr("LowRankProjection"), HasSubstr("bottleneck"))));
}

}  // namespace
