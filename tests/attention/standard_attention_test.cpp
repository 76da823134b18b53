#include <attnkit/attention/grouped_query_attention.h>
#include <attnkit/attention/standard_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"
#include "support/naive.h"

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(StandardAttention,
                       ContractCase{"causal",
                                    [] {
                                      return as_attention(StandardAttention(
                                          StandardAttentionOptions(32, 4).causal(true)));
                                    },
                                    true},
                       ContractCase{"non_causal_bias",
                                    [] {
                                      return as_attention(StandardAttention(
                                          StandardAttentionOptions(24, 3).bias(true)));
                                    },
                                    false},
                       ContractCase{"causal_temperature_rope",
                                    [] {
                                      return as_attention(StandardAttention(
                                          StandardAttentionOptions(32, 4)
                                              .causal(true)
                                              .temperature(0.6)
                                              .rope(RopeOptions().style(
                                                  RopeStyle::kInterleaved))));
                                    },
                                    true});

TEST(StandardAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  StandardAttention attn(StandardAttentionOptions(32, 4).causal(true).bias(true));
  const int64_t B = 2, T = 7, H = 4, hd = 8;
  torch::Tensor x = torch::randn({B, T, 32});
  torch::Tensor y = attn(x);
  torch::NoGradGuard no_grad;
  torch::Tensor xd = x.to(torch::kDouble);
  auto lin = [](const torch::Tensor& in, const torch::nn::Linear& l) {
    return in.matmul(l->weight.to(torch::kDouble).t()) + l->bias.to(torch::kDouble);
  };
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, H, hd}).transpose(1, 2); };
  torch::Tensor o =
      testing::naive_attention(heads(lin(xd, attn->q_proj)), heads(lin(xd, attn->k_proj)),
                               heads(lin(xd, attn->v_proj)), 1.0 / std::sqrt(8.0), true);
  torch::Tensor expected = lin(o.transpose(1, 2).reshape({B, T, 32}), attn->o_proj);
  EXPECT_LT(max_abs_diff(y, expected), 1e-5);
}

// attzoo's MultiHeadSelfAttention(temperature=t, rope=True), written from its spec in plain torch
// ops on the module's weights: interleaved RoPE (theta 10000) on q and k, logits
// q.k / (sqrt(hd) * t), then an additive mask, softmax, weights . v, o_proj.
TEST(StandardAttention, TemperatureAndRopeMatchNaiveReimplementation) {
  torch::manual_seed(5);
  const int64_t B = 2, T = 7, H = 4, hd = 8;
  const double temperature = 0.6;
  StandardAttention attn(StandardAttentionOptions(32, H)
                             .bias(true)
                             .temperature(temperature)
                             .rope(RopeOptions().style(RopeStyle::kInterleaved)));
  attn->to(torch::kDouble);
  torch::Tensor x = torch::randn({B, T, 32}, torch::kDouble);
  torch::Tensor additive = torch::randn({T, T}, torch::kDouble);
  torch::NoGradGuard no_grad;
  auto heads = [&](torch::nn::Linear l) { return l(x).view({B, T, H, hd}); };
  torch::Tensor q = testing::naive_rope_interleaved(heads(attn->q_proj), 10000.0).transpose(1, 2);
  torch::Tensor k = testing::naive_rope_interleaved(heads(attn->k_proj), 10000.0).transpose(1, 2);
  torch::Tensor v = heads(attn->v_proj).transpose(1, 2);
  auto naive = [&](const torch::Tensor& bias) {
    torch::Tensor logits = q.matmul(k.transpose(-1, -2)) / (std::sqrt(double(hd)) * temperature);
    torch::Tensor w = torch::softmax(logits + bias, -1);  // [B, H, T, T]
    return std::make_pair(attn->o_proj(w.matmul(v).transpose(1, 2).reshape({B, T, 32})), w);
  };
  auto [expected, weights] = naive(torch::zeros({T, T}, torch::kDouble));
  EXPECT_LT(max_abs_diff(attn(x), expected), 1e-12);
  EXPECT_LT(max_abs_diff(attn->forward_with_aux(x).attn_weights, weights), 1e-12);
  EXPECT_LT(max_abs_diff(attn(x, additive), naive(additive).first), 1e-12);

  // the causal form through naive loops, and through the decode state (absolute positions)
  StandardAttention causal(StandardAttentionOptions(32, H)
                               .bias(true)
                               .causal(true)
                               .temperature(temperature)
                               .rope(RopeOptions().style(RopeStyle::kInterleaved)));
  causal->to(torch::kDouble);
  testing::copy_parameters(*attn, *causal);
  torch::Tensor o = testing::naive_attention(q, k, v, 1.0 / (std::sqrt(double(hd)) * temperature),
                                             /*causal=*/true);
  torch::Tensor full = causal(x);
  EXPECT_LT(max_abs_diff(full, causal->o_proj(o.transpose(1, 2).reshape({B, T, 32}))), 1e-12);
  DecodeState state = causal->init_state(B);
  std::vector<torch::Tensor> parts = {causal(x.narrow(1, 0, 3), state)};
  for (int64_t t = 3; t < T; ++t) parts.push_back(causal(x.narrow(1, t, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), 1e-12);
}

TEST(StandardAttention, DefaultTemperatureAndNoRopeAreThePlainModule) {
  torch::manual_seed(6);
  StandardAttention plain(StandardAttentionOptions(32, 4).causal(true));
  StandardAttention explicit_one(StandardAttentionOptions(32, 4).causal(true).temperature(1.0));
  testing::copy_parameters(*plain, *explicit_one);
  torch::Tensor x = torch::randn({2, 6, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(plain(x), explicit_one(x)));
  // temperature t is the same as dividing q_proj by t at temperature 1
  StandardAttention hot(StandardAttentionOptions(32, 4).causal(true).temperature(2.5));
  testing::copy_parameters(*plain, *hot);
  plain->q_proj->weight.div_(2.5);
  EXPECT_LT(max_abs_diff(hot(x), plain(x)), 1e-5);
}

TEST(StandardAttention, EqualsGroupedQueryWithAllKvHeads) {
  torch::manual_seed(1);
  StandardAttention standard(StandardAttentionOptions(32, 4).causal(true));
  GroupedQueryAttention grouped(GroupedQueryAttentionOptions(32, 4, 4).causal(true));
  testing::copy_parameters(*standard, *grouped);
  torch::Tensor x = torch::randn({2, 9, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(testing::close(standard(x), grouped(x)));
}

TEST(StandardAttention, WeightRowsSumToOneAndMasksApply) {
  torch::manual_seed(2);
  StandardAttention attn(StandardAttentionOptions(16, 2));
  torch::Tensor x = torch::randn({1, 5, 16});
  torch::Tensor w = attn->forward_with_aux(x).attn_weights;
  ASSERT_EQ(w.sizes(), torch::IntArrayRef({1, 2, 5, 5}));
  EXPECT_TRUE(testing::close(w.sum(-1), torch::ones({1, 2, 5})));
  EXPECT_TRUE((w >= 0).all().item<bool>());

  // a bool keep mask hiding key 4 equals an additive mask of -inf there
  torch::Tensor keep = torch::ones({5, 5}, torch::kBool);
  keep.select(1, 4).fill_(false);
  torch::Tensor additive = torch::zeros({5, 5});
  additive.select(1, 4).fill_(-std::numeric_limits<float>::infinity());
  torch::NoGradGuard no_grad;
  torch::Tensor y_keep = attn(x, keep);
  EXPECT_TRUE(testing::close(y_keep, attn(x, additive)));
  EXPECT_GT(max_abs_diff(y_keep, attn(x)), 1e-4);
  // per-batch [B, T, T] masks broadcast over heads
  EXPECT_TRUE(testing::close(attn(x, keep.unsqueeze(0)), y_keep));
}

TEST(StandardAttention, ErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(StandardAttention(StandardAttentionOptions(30, 4)),
                       HasSubstr("StandardAttention: dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(StandardAttention(StandardAttentionOptions(32, 0)), HasSubstr("num_heads"));
  ATTNKIT_EXPECT_ERROR(StandardAttention(StandardAttentionOptions(32, 4).temperature(0)),
                       HasSubstr("StandardAttention: temperature must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(StandardAttention(StandardAttentionOptions(32, 4).temperature(-1.5)),
                       HasSubstr("StandardAttention: temperature must be positive, got -1.5"));
  ATTNKIT_EXPECT_ERROR(
      StandardAttention(StandardAttentionOptions(32, 4).rope(RopeOptions().dim(3))),
      HasSubstr("StandardAttention"), HasSubstr("rope dim must be even, got 3"));
  ATTNKIT_EXPECT_ERROR(
      StandardAttention(StandardAttentionOptions(32, 4).rope(RopeOptions().dim(10))),
      HasSubstr("StandardAttention"), HasSubstr("rope dim (10) must be <= head_dim (8)"));
  StandardAttention attn(32, 4);
  ATTNKIT_EXPECT_ERROR(attn(torch::randn({1, 3, 32}), torch::ones({1, 1, 3, 3}, torch::kLong)),
                       HasSubstr("attn_mask"), HasSubstr("Long"));
}

TEST(StandardAttention, PrettyPrint) {
  std::ostringstream s;
  StandardAttention(StandardAttentionOptions(32, 4).causal(true))->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::StandardAttention(dim=32, num_heads=4, causal=true, dropout=0, "
            "temperature=1, bias=false, rope=none)");
  std::ostringstream r;
  StandardAttention(StandardAttentionOptions(32, 4).temperature(0.5).rope(
                        RopeOptions().style(RopeStyle::kInterleaved)))
      ->pretty_print(r);
  EXPECT_EQ(r.str(),
            "attnkit::StandardAttention(dim=32, num_heads=4, causal=false, dropout=0, "
            "temperature=0.5, bias=false, rope=rope(dim=0, style=interleaved, channels=first, "
            "theta=10000, scaling=none))");
}

TEST(StandardAttention, DropoutOnlyInTraining) {
  torch::manual_seed(3);
  StandardAttention attn(StandardAttentionOptions(32, 4).dropout(0.5));
  torch::Tensor x = torch::randn({1, 6, 32});
  torch::NoGradGuard no_grad;
  attn->eval();
  torch::Tensor a = attn(x), b = attn(x);
  EXPECT_TRUE(torch::equal(a, b));
  attn->train();
  torch::manual_seed(4);
  torch::Tensor c = attn(x);
  torch::manual_seed(4);
  EXPECT_TRUE(torch::equal(c, attn(x))) << "dropout must follow the seed";
  EXPECT_GT(max_abs_diff(c, a), 1e-3);
}

}  // namespace
}  // namespace attnkit
