#include <attnkit/attention/dilated_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"
#include "support/naive.h"
#include "support/zoo_naive.h"

#include <cmath>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    DilatedAttention,
    ContractCase{"rate2", [] { return as_attention(DilatedAttention(32, 4)); }, false},
    ContractCase{"rate3_bias",
                 [] {
                   return as_attention(DilatedAttention(
                       DilatedAttentionOptions(24, 3).dilation_rate(3).bias(true)));
                 },
                 false, true, 2, 13},
    ContractCase{"rate1_one_head",
                 [] {
                   return as_attention(
                       DilatedAttention(DilatedAttentionOptions(16, 1).dilation_rate(1)));
                 },
                 false});

testing::NaiveZooResult naive_dilated(DilatedAttention& attn,
                                      const torch::Tensor& x,
                                      const torch::Tensor& user_keep = {}) {
  const auto& o = attn->options;
  const int64_t r = o.dilation_rate();
  const double scale = 1.0 / (std::sqrt(double(o.dim() / o.num_heads())) * o.temperature());
  return testing::naive_zoo_attention(attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj,
                                      o.num_heads(), scale, x,
                                      [&](int64_t b, int64_t, int64_t i, int64_t j) {
                                        bool keep = (std::abs(j - i) % r) == 0;
                                        if (user_keep.defined())
                                          keep = keep && user_keep[b][i][j].item<bool>();
                                        return keep;
                                      });
}

TEST(DilatedAttention, MatchesNaiveReimplementation) {
  for (int64_t r : {1, 2, 3, 5}) {
    torch::manual_seed(0);
    DilatedAttention attn(
        DilatedAttentionOptions(32, 4).dilation_rate(r).bias(true).temperature(1.5));
    torch::Tensor x = torch::randn({2, 11, 32});
    AttentionOutput out = attn->forward_with_aux(x);
    auto expected = naive_dilated(attn, x);
    EXPECT_LT(max_abs_diff(out.output, expected.output), 1e-5) << "rate " << r;
    EXPECT_TRUE(testing::close(out.attn_weights, expected.weights)) << "rate " << r;
  }
}

// attzoo test_dilation / test_masks: the diagonal is kept, rows 2 and 3 have the exact
// patterns for r = 2 and r = 3 on S = 8.
TEST(DilatedAttention, UpstreamExactPatterns) {
  DilatedAttention r2(DilatedAttentionOptions(8, 1).dilation_rate(2));
  DilatedAttention r3(DilatedAttentionOptions(8, 1).dilation_rate(3));
  torch::Tensor m2 = r2->keep_mask(8), m3 = r3->keep_mask(8);
  EXPECT_TRUE(m2.diagonal().all().item<bool>());
  EXPECT_TRUE(m3.diagonal().all().item<bool>());
  auto row = [](std::vector<int> v) {
    return torch::tensor(std::vector<int64_t>(v.begin(), v.end())).to(torch::kBool);
  };
  EXPECT_TRUE(torch::equal(m2[2], row({1, 0, 1, 0, 1, 0, 1, 0})));
  EXPECT_TRUE(torch::equal(m2[3], row({0, 1, 0, 1, 0, 1, 0, 1})));
  EXPECT_TRUE(torch::equal(m3[2], row({0, 0, 1, 0, 0, 1, 0, 0})));
  EXPECT_TRUE(torch::equal(m3[3], row({1, 0, 0, 1, 0, 0, 1, 0})));
  EXPECT_TRUE(torch::equal(m3, m3.t()));
  // the weights follow the pattern exactly: zero off it, non-zero on it
  torch::manual_seed(1);
  torch::Tensor w = r3->forward_with_aux(torch::randn({1, 8, 8})).attn_weights[0][0];
  EXPECT_TRUE(torch::equal(w.ne(0), m3));
  EXPECT_LT((w.sum(-1) - 1).abs().max().item<double>(), 1e-6);
}

// attzoo: a bool user mask is AND-ed with the pattern, a float one is added.
TEST(DilatedAttention, UserMasksCombine) {
  torch::manual_seed(2);
  DilatedAttention attn(DilatedAttentionOptions(32, 4).dilation_rate(2));
  torch::Tensor x = torch::randn({2, 9, 32});
  torch::Tensor causal = torch::ones({9, 9}, torch::kBool).tril();
  auto expected = naive_dilated(attn, x, causal.expand({2, 9, 9}));
  EXPECT_LT(max_abs_diff(attn(x, causal), expected.output), 1e-5);
  torch::Tensor additive = torch::zeros({2, 9, 9}).masked_fill(
      causal.logical_not(), -std::numeric_limits<float>::infinity());
  EXPECT_LT(max_abs_diff(attn(x, additive), expected.output), 1e-5);
}

TEST(DilatedAttention, NoDecoding) {
  DilatedAttention attn(32, 4);
  EXPECT_FALSE(attn->supports_decoding());
  ATTNKIT_EXPECT_ERROR(attn->init_state(1), HasSubstr("DilatedAttention"));
}

TEST(DilatedAttention, ParametersAndPrint) {
  DilatedAttention attn(16, 2);
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), 4u);
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) {
    ASSERT_NE(params.find(name), nullptr) << name;
  }
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::DilatedAttention(dim=16, num_heads=2, dilation_rate=2, temperature=1, "
            "dropout=0, bias=false, rope=none)");
}

TEST(DilatedAttention, ErrorsNameTheArgument) {
  auto opts = [] { return DilatedAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(DilatedAttention(30, 4), HasSubstr("DilatedAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(DilatedAttention(-3, 4), HasSubstr("dim must be positive, got -3"));
  ATTNKIT_EXPECT_ERROR(DilatedAttention(32, 0), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(DilatedAttention(opts().dilation_rate(0)),
                       HasSubstr("dilation_rate must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(DilatedAttention(opts().temperature(-1)),
                       HasSubstr("temperature must be positive, got -1"));
  ATTNKIT_EXPECT_ERROR(DilatedAttention(opts().dropout(-0.5)),
                       HasSubstr("dropout must be in [0, 1), got -0.5"));
  ATTNKIT_EXPECT_ERROR(DilatedAttention(opts())->keep_mask(-1),
                       HasSubstr("seq_len must be positive, got -1"));
}

// attzoo's rope=True (interleaved pairs, theta 10000) against a naive RoPE on q and k.
TEST(DilatedAttention, MatchesNaiveWithRope) {
  torch::manual_seed(7);
  DilatedAttention attn(DilatedAttentionOptions(32, 4).dilation_rate(2).rope(
      RopeOptions().style(RopeStyle::kInterleaved)));
  torch::Tensor x = torch::randn({2, 10, 32});
  auto expected = testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, 4, 1.0 / std::sqrt(8.0), x,
      [](int64_t, int64_t, int64_t i, int64_t j) { return std::abs(i - j) % 2 == 0; }, {},
      [](const torch::Tensor& t) { return testing::naive_rope_interleaved(t, 10000.0); });
  EXPECT_LT(max_abs_diff(attn(x), expected.output), 1e-5);
  DilatedAttention plain(DilatedAttentionOptions(32, 4).dilation_rate(2));
  testing::copy_parameters(*attn, *plain);
  EXPECT_GT(max_abs_diff(plain(x), expected.output), 1e-3);  // the rotation matters
  ATTNKIT_EXPECT_ERROR(
      DilatedAttention(DilatedAttentionOptions(32, 4).dilation_rate(2).rope(RopeOptions().dim(3))),
      HasSubstr("DilatedAttention"), HasSubstr("rope dim must be even, got 3"));
}

}  // namespace
}  // namespace attnkit
