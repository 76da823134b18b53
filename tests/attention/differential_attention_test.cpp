#include <attnkit/attention/differential_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"

#include <cmath>
#include <limits>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    DifferentialAttention,
    ContractCase{"causal", [] { return as_attention(DifferentialAttention(32, 2)); }, true},
    ContractCase{"causal_deep_bias",
                 [] {
                   return as_attention(DifferentialAttention(
                       DifferentialAttentionOptions(24, 3).depth(5).bias(true)));
                 },
                 true},
    ContractCase{"non_causal",
                 [] {
                   return as_attention(
                       DifferentialAttention(DifferentialAttentionOptions(32, 4).causal(false)));
                 },
                 false});

// Softmax map of one sub-head by explicit loops (double): [T, T], rows of masked keys zero.
torch::Tensor naive_softmax_map(const torch::Tensor& q,
                                const torch::Tensor& k,
                                double scale,
                                bool causal) {
  const int64_t T = q.size(0), D = q.size(1);
  torch::Tensor a = torch::zeros({T, T}, torch::kDouble);
  for (int64_t i = 0; i < T; ++i) {
    std::vector<double> logit(T, -std::numeric_limits<double>::infinity());
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < T; ++j) {
      if (causal && j > i) continue;
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += q[i][d].item<double>() * k[j][d].item<double>();
      logit[j] = s * scale;
      m = std::max(m, logit[j]);
    }
    double denom = 0;
    for (int64_t j = 0; j < T; ++j) denom += std::exp(logit[j] - m);
    for (int64_t j = 0; j < T; ++j) a[i][j] = std::exp(logit[j] - m) / denom;
  }
  return a;
}

struct NaiveDiff {
  torch::Tensor output;  // [B, T, dim]
  torch::Tensor maps;    // [B, H, T, T]
};

// docs/catalog.md, "Differential attention", written out on the module's weights.
NaiveDiff naive_differential(DifferentialAttention& attn, const torch::Tensor& x, bool causal) {
  torch::NoGradGuard no_grad;
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), H = attn->options.num_heads();
  const int64_t hd = D / (2 * H);
  auto lin = [](const torch::Tensor& in, const torch::nn::Linear& l) {
    torch::Tensor y = in.matmul(l->weight.to(torch::kDouble).t());
    return l->bias.defined() ? y + l->bias.to(torch::kDouble) : y;
  };
  torch::Tensor xd = x.to(torch::kDouble);
  torch::Tensor q = lin(xd, attn->q_proj), k = lin(xd, attn->k_proj), v = lin(xd, attn->v_proj);
  double dot1 = 0, dot2 = 0;
  for (int64_t d = 0; d < hd; ++d) {
    dot1 += attn->lambda_q1[d].item<double>() * attn->lambda_k1[d].item<double>();
    dot2 += attn->lambda_q2[d].item<double>() * attn->lambda_k2[d].item<double>();
  }
  const double init = 0.8 - 0.6 * std::exp(-0.3 * attn->options.depth());
  const double lam = std::exp(dot1) - std::exp(dot2) + init;
  torch::Tensor merged = torch::zeros({B, T, D}, torch::kDouble);
  torch::Tensor maps = torch::zeros({B, H, T, T}, torch::kDouble);
  torch::Tensor g = attn->head_norm.to(torch::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      // sub-head s of q/k occupies channels [s*hd, (s+1)*hd); value head h channels [h*2hd, ...)
      torch::Tensor a1 =
          naive_softmax_map(q[b].narrow(1, 2 * h * hd, hd), k[b].narrow(1, 2 * h * hd, hd),
                            1 / std::sqrt(hd), causal);
      torch::Tensor a2 =
          naive_softmax_map(q[b].narrow(1, (2 * h + 1) * hd, hd),
                            k[b].narrow(1, (2 * h + 1) * hd, hd), 1 / std::sqrt(hd), causal);
      torch::Tensor a = a1 - lam * a2;
      maps[b][h] = a;
      torch::Tensor o = a.matmul(v[b].narrow(1, h * 2 * hd, 2 * hd));  // [T, 2hd]
      o = o / torch::sqrt(o.pow(2).mean(-1, true) + 1e-5) * g * (1 - init);
      merged[b].narrow(1, h * 2 * hd, 2 * hd).copy_(o);
    }
  }
  return {lin(merged, attn->o_proj), maps};
}

void randomize_lambdas_and_norm(DifferentialAttention& attn) {
  torch::NoGradGuard no_grad;
  attn->head_norm.uniform_(0.5, 1.5);
  for (auto* p : {&attn->lambda_q1, &attn->lambda_k1, &attn->lambda_q2, &attn->lambda_k2}) {
    p->normal_(0.0, 0.5);
  }
}

TEST(DifferentialAttention, MatchesNaiveReimplementation) {
  for (bool causal : {true, false}) {
    torch::manual_seed(0);
    DifferentialAttention attn(
        DifferentialAttentionOptions(24, 2).depth(2).causal(causal).bias(true));
    randomize_lambdas_and_norm(attn);
    torch::Tensor x = torch::randn({2, 7, 24});
    NaiveDiff expected = naive_differential(attn, x, causal);
    AttentionOutput got = attn->forward_with_aux(x);
    EXPECT_LT(max_abs_diff(got.output, expected.output), 1e-5) << "causal " << causal;
    EXPECT_LT(max_abs_diff(attn(x), expected.output), 1e-5) << "causal " << causal;
    EXPECT_LT(max_abs_diff(got.attn_weights, expected.maps), 1e-5) << "causal " << causal;
  }
}

TEST(DifferentialAttention, WeightRowsSumToOneMinusLambda) {
  torch::manual_seed(1);
  DifferentialAttention attn(32, 2);
  randomize_lambdas_and_norm(attn);
  torch::Tensor w = attn->forward_with_aux(torch::randn({1, 6, 32})).attn_weights;
  ASSERT_EQ(w.sizes(), torch::IntArrayRef({1, 2, 6, 6}));
  const double lam = attn->lambda().item<double>();
  EXPECT_LT(max_abs_diff(w.sum(-1), torch::full({1, 2, 6}, 1.0 - lam)), 1e-5);
  EXPECT_TRUE((w.triu(1) == 0).all().item<bool>());  // causal: nothing above the diagonal
}

// attnhut test_differential::test_shape
TEST(DifferentialAttention, UpstreamShape) {
  torch::manual_seed(0);
  DifferentialAttention attn(64, 4);
  torch::Tensor x = torch::randn({2, 10, 64});
  torch::Tensor y = attn(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

// attnhut test_differential::test_causal (conftest.assert_causal)
TEST(DifferentialAttention, UpstreamCausal) {
  torch::manual_seed(0);
  DifferentialAttention attn(64, 4);
  attn->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({1, 16, 64});
  torch::Tensor x2 = x.clone();
  x2.select(1, 15).add_(5.0);
  torch::Tensor y = attn(x), y2 = attn(x2);
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 15), y2.narrow(1, 0, 15), 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(y.narrow(1, 15, 1), y2.narrow(1, 15, 1), 1e-4, 1e-4));
}

// attnhut test_differential::test_lambda_init_grows_with_depth
TEST(DifferentialAttention, UpstreamLambdaInitGrowsWithDepth) {
  EXPECT_LT(lambda_init(0), lambda_init(8));
  EXPECT_LT(lambda_init(8), lambda_init(64));
  EXPECT_GT(lambda_init(0), 0.0);
  EXPECT_LT(lambda_init(64), 0.8);
  EXPECT_NEAR(lambda_init(0), 0.2, 1e-12);
  EXPECT_NEAR(lambda_init(3), 0.8 - 0.6 * std::exp(-0.9), 1e-12);
  DifferentialAttention attn(DifferentialAttentionOptions(32, 2).depth(3));
  EXPECT_DOUBLE_EQ(attn->lambda_init_value(), lambda_init(3));
}

TEST(DifferentialAttention, PerHeadMaskAppliesToBothSubHeads) {
  torch::manual_seed(2);
  DifferentialAttention attn(DifferentialAttentionOptions(32, 2).causal(false));
  torch::Tensor x = torch::randn({2, 6, 32});
  torch::Tensor keep = torch::rand({6, 6}) > 0.3;
  keep.diagonal().fill_(true);
  torch::NoGradGuard no_grad;
  torch::Tensor y = attn(x, keep);
  EXPECT_GT(max_abs_diff(y, attn(x)), 1e-4);
  // the same mask given per batch and per head
  EXPECT_TRUE(testing::close(attn(x, keep.expand({2, 2, 6, 6})), y));
  // head 1 hides everything: its rows are zero, so only head 0 reaches o_proj
  torch::Tensor per_head = keep.expand({2, 2, 6, 6}).clone();
  per_head.select(1, 1).fill_(false);
  torch::Tensor got = attn(x, per_head);
  EXPECT_TRUE(torch::isfinite(got).all().item<bool>());
  torch::Tensor w = attn->o_proj->weight;  // [32, 32]: head 1 is input columns 16..31
  EXPECT_GT(max_abs_diff(got, y), 1e-4);
  // zeroing head 1's o_proj columns makes the unmasked-head-1 output equal the masked one
  torch::Tensor saved = w.narrow(1, 16, 16).clone();
  w.narrow(1, 16, 16).zero_();
  EXPECT_TRUE(testing::close(got, attn(x, keep)));
  w.narrow(1, 16, 16).copy_(saved);
}

TEST(DifferentialAttention, CachesKeysAndValues) {
  DifferentialAttention attn(32, 2);  // hd 8
  DecodeState state = attn->init_state(1);
  torch::NoGradGuard no_grad;
  attn->forward(torch::randn({1, 5, 32}), state);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"k", "v"}));
  EXPECT_EQ(state.bytes(), 5 * (2 * 2 * 8 + 2 * 16) * 4);
  DifferentialAttention bidirectional(DifferentialAttentionOptions(32, 2).causal(false));
  EXPECT_FALSE(bidirectional->supports_decoding());
}

TEST(DifferentialAttention, ParametersAndPrint) {
  DifferentialAttention attn(DifferentialAttentionOptions(32, 2).bias(true));
  std::map<std::string, std::vector<int64_t>> expected = {
      {"q_proj.weight", {32, 32}}, {"q_proj.bias", {32}},       {"k_proj.weight", {32, 32}},
      {"k_proj.bias", {32}},       {"v_proj.weight", {32, 32}}, {"v_proj.bias", {32}},
      {"o_proj.weight", {32, 32}}, {"o_proj.bias", {32}},       {"head_norm", {16}},
      {"lambda_q1", {8}},          {"lambda_k1", {8}},          {"lambda_q2", {8}},
      {"lambda_k2", {8}}};
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
  EXPECT_TRUE(torch::equal(attn->head_norm, torch::ones({16})));
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::DifferentialAttention(dim=32, num_heads=2, depth=0, causal=true, bias=true)");
}

// attnhut test_requires_dim_divisible_by_two_times_heads, and every other argument.
TEST(DifferentialAttention, ErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(DifferentialAttention(64, 5), HasSubstr("DifferentialAttention"),
                       HasSubstr("dim (64) must be divisible by 2 * num_heads (10)"));
  ATTNKIT_EXPECT_ERROR(DifferentialAttention(0, 2), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(DifferentialAttention(32, -1),
                       HasSubstr("num_heads must be positive, got -1"));
  ATTNKIT_EXPECT_ERROR(DifferentialAttention(DifferentialAttentionOptions(32, 2).depth(-2)),
                       HasSubstr("depth must be >= 0"), HasSubstr("got -2"));
  ATTNKIT_EXPECT_ERROR(lambda_init(-1), HasSubstr("lambda_init: depth must be >= 0"));
  DifferentialAttention attn(32, 2);
  ATTNKIT_EXPECT_ERROR(attn(torch::randn({1, 4, 32}), torch::ones({1, 3, 4, 4}, torch::kBool)),
                       HasSubstr("attn_mask"));
}

}  // namespace
}  // namespace attnkit
