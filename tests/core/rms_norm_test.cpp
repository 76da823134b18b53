// Tests for include/attnkit/core/rms_norm.h against a plain-loop RMSNorm written from the formula
// y = x * rsqrt(mean(x^2) + eps) * w  (w + 1 when zero-centered), docs/catalog.md, "RMSNorm".

#include <attnkit/core/rms_norm.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>

namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

class RmsNormTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

// Row-by-row loops in double. x: [..., dim], weight: [dim]. Returns float64 [..., dim].
torch::Tensor naive_rms_norm(const torch::Tensor& x,
                             const torch::Tensor& weight,
                             double eps,
                             bool zero_centered) {
  const int64_t dim = x.size(-1);
  torch::Tensor x2 = x.to(torch::kDouble).reshape({-1, dim}).contiguous();
  torch::Tensor w = weight.to(torch::kDouble).contiguous();
  torch::Tensor y = torch::empty_like(x2);
  auto xa = x2.accessor<double, 2>();
  auto wa = w.accessor<double, 1>();
  auto ya = y.accessor<double, 2>();
  for (int64_t r = 0; r < x2.size(0); ++r) {
    double sum_sq = 0;
    for (int64_t c = 0; c < dim; ++c) sum_sq += xa[r][c] * xa[r][c];
    const double inv_rms = 1.0 / std::sqrt(sum_sq / dim + eps);
    for (int64_t c = 0; c < dim; ++c) {
      const double gain = zero_centered ? 1.0 + wa[c] : wa[c];
      ya[r][c] = xa[r][c] * inv_rms * gain;
    }
  }
  return y.reshape(x.sizes());
}

TEST_F(RmsNormTest, InitWeightIsOnesOrZeros) {
  attnkit::RMSNorm plain(attnkit::RMSNormOptions(6));
  attnkit::RMSNorm centered(attnkit::RMSNormOptions(6).zero_centered(true));
  EXPECT_TRUE(torch::equal(plain->weight, torch::ones({6})));
  EXPECT_TRUE(torch::equal(centered->weight, torch::zeros({6})));
  EXPECT_TRUE(plain->weight.requires_grad());
  auto names = plain->named_parameters().keys();
  EXPECT_EQ(names, std::vector<std::string>({"weight"}));
}

TEST_F(RmsNormTest, ForwardAtInitMatchesNaive) {
  for (bool zero_centered : {false, true}) {
    SCOPED_TRACE(zero_centered ? "zero_centered" : "plain");
    attnkit::RMSNorm norm(attnkit::RMSNormOptions(16).eps(1e-5).zero_centered(zero_centered));
    torch::Tensor x = torch::randn({3, 5, 16});
    torch::Tensor y = norm(x);
    // At init both parametrisations mean gain 1.
    torch::Tensor expected = naive_rms_norm(x, torch::ones({16}), 1e-5, false);
    ASSERT_EQ(y.scalar_type(), torch::kFloat);
    ASSERT_EQ(y.sizes(), x.sizes());
    EXPECT_TRUE(torch::allclose(y.to(torch::kDouble), expected, 1e-5, 1e-6));
  }
}

TEST_F(RmsNormTest, ForwardWithRandomWeightsMatchesNaive) {
  for (bool zero_centered : {false, true}) {
    SCOPED_TRACE(zero_centered ? "zero_centered" : "plain");
    attnkit::RMSNorm norm(attnkit::RMSNormOptions(7).eps(0.25).zero_centered(zero_centered));
    {
      torch::NoGradGuard no_grad;
      norm->weight.copy_(torch::randn({7}));
    }
    torch::Tensor x = torch::randn({4, 7}) * 0.3;  // small x so that eps matters
    torch::Tensor expected = naive_rms_norm(x, norm->weight.detach(), 0.25, zero_centered);
    EXPECT_TRUE(torch::allclose(norm(x).to(torch::kDouble), expected, 1e-5, 1e-6));
    // The two parametrisations really differ for the same stored weight.
    torch::Tensor other = naive_rms_norm(x, norm->weight.detach(), 0.25, !zero_centered);
    EXPECT_FALSE(torch::allclose(expected, other, 1e-3, 1e-3));
  }
}

TEST_F(RmsNormTest, FunctionalWithoutWeightIsPureNormalisation) {
  torch::Tensor x = torch::randn({2, 9}, torch::kDouble);
  torch::Tensor y = attnkit::rms_norm(x, torch::Tensor(), 1e-6);
  EXPECT_TRUE(torch::allclose(y, naive_rms_norm(x, torch::ones({9}), 1e-6, false), 1e-12, 1e-12));
}

TEST_F(RmsNormTest, Float64InFloat64Out) {
  attnkit::RMSNorm norm(attnkit::RMSNormOptions(10).eps(1e-6));
  norm->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::randn({10}, torch::kDouble));
  }
  torch::Tensor x = torch::randn({3, 10}, torch::kDouble);
  torch::Tensor y = norm(x);
  ASSERT_EQ(y.scalar_type(), torch::kDouble);
  // A float round trip would leave errors near 1e-7; double keeps 1e-13.
  EXPECT_TRUE(
      torch::allclose(y, naive_rms_norm(x, norm->weight.detach(), 1e-6, false), 1e-13, 1e-13));
}

TEST_F(RmsNormTest, BFloat16IsComputedInFloat) {
  const int64_t dim = 256;
  attnkit::RMSNorm norm{attnkit::RMSNormOptions(dim)};
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::rand({dim}) + 0.5);
  }
  torch::Tensor x = (torch::randn({8, dim}) * 3).to(torch::kBFloat16);
  torch::Tensor y = norm(x);
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  // Exact math on the bf16 input values, then one rounding to bf16: every element is within half
  // a bf16 ulp of the exact value, i.e. 2^(e - 8) for |exact| in [2^e, 2^(e+1)) (8 significand
  // bits). Rounding intermediates to bf16 breaks this.
  torch::Tensor exact = naive_rms_norm(x, norm->weight.detach(), 1e-6, false);
  torch::Tensor err = (y.to(torch::kDouble) - exact).abs();
  torch::Tensor bound = torch::exp2(torch::floor(torch::log2(exact.abs())) - 8) * 1.0001;
  EXPECT_TRUE((err <= bound).all().item<bool>()) << "max err " << err.max().item<double>();
}

TEST_F(RmsNormTest, GradientMatchesAutogradOfNaiveFormula) {
  for (bool zero_centered : {false, true}) {
    SCOPED_TRACE(zero_centered ? "zero_centered" : "plain");
    const double eps = 0.1;
    attnkit::RMSNorm norm(attnkit::RMSNormOptions(6).eps(eps).zero_centered(zero_centered));
    norm->to(torch::kDouble);
    {
      torch::NoGradGuard no_grad;
      norm->weight.copy_(torch::randn({6}, torch::kDouble));
    }
    torch::Tensor x = torch::randn({2, 3, 6}, torch::kDouble).requires_grad_(true);
    torch::Tensor upstream = torch::randn({2, 3, 6}, torch::kDouble);
    (norm(x) * upstream).sum().backward();

    torch::Tensor x2 = x.detach().clone().requires_grad_(true);
    torch::Tensor w2 = norm->weight.detach().clone().requires_grad_(true);
    torch::Tensor gain = zero_centered ? w2 + 1 : w2;
    torch::Tensor y2 = x2 / torch::sqrt((x2 * x2).mean(-1, true) + eps) * gain;
    (y2 * upstream).sum().backward();

    EXPECT_TRUE(torch::allclose(x.grad(), x2.grad(), 1e-10, 1e-12));
    EXPECT_TRUE(torch::allclose(norm->weight.grad(), w2.grad(), 1e-10, 1e-12));
  }
}

TEST_F(RmsNormTest, WrongLastDimErrors) {
  attnkit::RMSNorm norm(attnkit::RMSNormOptions(8));
  EXPECT_THAT(
      [&] {
        norm(torch::randn({2, 5}));
      },
      ThrowsMessage<c10::Error>(AllOf(HasSubstr("RMSNorm"), HasSubstr("dim"))));
  EXPECT_THAT([&] { attnkit::RMSNorm bad(attnkit::RMSNormOptions(0)); },
              ThrowsMessage<c10::Error>(AllOf(HasSubstr("RMSNorm"), HasSubstr("dim"))));
  EXPECT_THAT(
      [&] {
        attnkit::rms_norm(torch::randn({2, 5}), torch::ones({4}), 1e-6);
      },
      ThrowsMessage<c10::Error>(AllOf(HasSubstr("rms_norm"), HasSubstr("weight"))));
}

TEST_F(RmsNormTest, PrettyPrint) {
  std::ostringstream plain;
  attnkit::RMSNorm(attnkit::RMSNormOptions(8))->pretty_print(plain);
  EXPECT_EQ(plain.str(), "attnkit::RMSNorm(dim=8, eps=1e-06, zero_centered=false)");
  std::ostringstream centered;
  attnkit::RMSNorm(attnkit::RMSNormOptions(128).eps(1e-5).zero_centered(true))
      ->pretty_print(centered);
  EXPECT_EQ(centered.str(), "attnkit::RMSNorm(dim=128, eps=1e-05, zero_centered=true)");
}

}  // namespace
