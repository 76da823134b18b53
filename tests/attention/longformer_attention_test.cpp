#include <attnkit/attention/longformer_attention.h>

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
    LongformerAttention,
    ContractCase{"window",
                 [] {
                   return as_attention(
                       LongformerAttention(LongformerAttentionOptions(32, 4).window_size(4)));
                 },
                 false},
    ContractCase{"window_globals_bias",
                 [] {
                   return as_attention(LongformerAttention(LongformerAttentionOptions(24, 3)
                                                               .window_size(3)
                                                               .global_positions({0, 7, 40})
                                                               .bias(true)));
                 },
                 false, true, 2, 13},
    ContractCase{"defaults", [] { return as_attention(LongformerAttention(16, 2)); }, false});

// Window OR global row OR global column, then softmax attention (docs/catalog.md,
// "Longformer attention").
testing::NaiveZooResult naive_longformer(LongformerAttention& attn,
                                         const torch::Tensor& x,
                                         const torch::Tensor& global /* [B, T] or undefined */,
                                         const torch::Tensor& user_keep = {} /* [T, T] */) {
  const auto& o = attn->options;
  const int64_t T = x.size(1), half = o.window_size() / 2;
  std::vector<bool> fixed(T, false);
  for (int64_t p : o.global_positions()) {
    if (p < T) fixed[p] = true;
  }
  auto is_global = [&](int64_t b, int64_t t) {
    return fixed[t] || (global.defined() && global[b][t].item<bool>());
  };
  const double scale = 1.0 / (std::sqrt(double(o.dim() / o.num_heads())) * o.temperature());
  return testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, o.num_heads(), scale, x,
      [&](int64_t b, int64_t, int64_t i, int64_t j) {
        bool keep = std::abs(i - j) <= half || is_global(b, i) || is_global(b, j);
        if (user_keep.defined()) keep = keep && user_keep[i][j].item<bool>();
        return keep;
      });
}

TEST(LongformerAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  LongformerAttention attn(
      LongformerAttentionOptions(32, 4).window_size(4).global_positions({1}).bias(true).temperature(
          1.3));
  torch::Tensor x = torch::randn({2, 12, 32});
  auto expected = naive_longformer(attn, x, {});
  AttentionOutput out = attn->forward_with_aux(x);
  EXPECT_LT(max_abs_diff(out.output, expected.output), 1e-5);
  EXPECT_TRUE(testing::close(out.attn_weights, expected.weights));
  // per-call globals, different per sample, plus the fixed ones
  torch::Tensor g = torch::zeros({2, 12}, torch::kBool);
  g[0][5] = true;
  g[1][9] = true;
  g[1][10] = true;
  auto expected_g = naive_longformer(attn, x, g);
  AttentionOutput out_g = attn->forward_with_aux_global(x, g);
  EXPECT_LT(max_abs_diff(out_g.output, expected_g.output), 1e-5);
  EXPECT_TRUE(testing::close(out_g.attn_weights, expected_g.weights));
}

// attzoo test_longformer: outside the window the weights vanish; a global token's row and
// column are non-zero everywhere; vector and batch global masks agree.
TEST(LongformerAttention, UpstreamGlobalRowsAndColumns) {
  torch::manual_seed(1);
  LongformerAttention attn(LongformerAttentionOptions(32, 4).window_size(4));
  torch::Tensor x = torch::randn({2, 10, 32});
  torch::Tensor plain = attn->forward_with_aux(x).attn_weights;
  for (int64_t i = 0; i < 10; ++i) {
    for (int64_t j = 0; j < 10; ++j) {
      EXPECT_EQ(plain[0][0][i][j].item<float>() != 0.0f, std::abs(i - j) <= 2) << i << "," << j;
    }
  }
  torch::Tensor g = torch::zeros({10}, torch::kBool);
  g[6] = true;
  torch::Tensor w = attn->forward_with_aux_global(x, g).attn_weights;
  EXPECT_GT(w.select(2, 6).min().item<double>(), 0.0);                        // global row
  EXPECT_GT(w.select(3, 6).min().item<double>(), 0.0);                        // global column
  EXPECT_EQ(w.select(2, 0).narrow(2, 3, 3).abs().max().item<double>(), 0.0);  // 3..5 outside
  EXPECT_LT((w.sum(-1) - 1).abs().max().item<double>(), 1e-6);
  torch::Tensor w_batch =
      attn->forward_with_aux_global(x, g.unsqueeze(0).expand({2, 10})).attn_weights;
  EXPECT_TRUE(torch::equal(w, w_batch));
  // the same global as a fixed option
  LongformerAttention fixed(LongformerAttentionOptions(32, 4).window_size(4).global_positions({6}));
  testing::copy_parameters(*attn, *fixed);
  EXPECT_TRUE(torch::equal(fixed->forward_with_aux(x).attn_weights, w));
}

// attzoo: causal + globals through a user mask; an additive mask; window >= S is full
// attention; window 1 is the one-hot diagonal.
TEST(LongformerAttention, UpstreamMasksAndWindowExtremes) {
  torch::manual_seed(2);
  LongformerAttention attn(LongformerAttentionOptions(32, 4).window_size(4).global_positions({0}));
  torch::Tensor x = torch::randn({1, 9, 32});
  torch::Tensor causal = torch::ones({9, 9}, torch::kBool).tril();
  auto expected = naive_longformer(attn, x, {}, causal);
  EXPECT_LT(max_abs_diff(attn(x, causal), expected.output), 1e-5);
  torch::Tensor additive = torch::zeros({9, 9}).masked_fill(
      causal.logical_not(), -std::numeric_limits<float>::infinity());
  EXPECT_LT(max_abs_diff(attn(x, additive), expected.output), 1e-5);

  LongformerAttention wide(LongformerAttentionOptions(32, 4).window_size(20));
  EXPECT_GT(wide->forward_with_aux(x).attn_weights.min().item<double>(), 0.0);
  LongformerAttention one(LongformerAttentionOptions(32, 4).window_size(1));
  torch::Tensor w = one->forward_with_aux(x).attn_weights;
  EXPECT_TRUE(torch::equal(w[0][1], torch::eye(9)));
}

TEST(LongformerAttention, ParametersAndPrint) {
  LongformerAttention attn(LongformerAttentionOptions(16, 2).global_positions({0, 3}));
  EXPECT_EQ(attn->named_parameters().size(), 4u);
  EXPECT_NE(attn->named_parameters().find("q_proj.weight"), nullptr);
  EXPECT_FALSE(attn->supports_decoding());
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::LongformerAttention(dim=16, num_heads=2, window_size=512, "
            "global_positions=[0, 3], temperature=1, dropout=0, bias=false, rope=none)");
}

TEST(LongformerAttention, ErrorsNameTheArgument) {
  auto opts = [] { return LongformerAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(LongformerAttention(30, 4), HasSubstr("LongformerAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(LongformerAttention(0, 4), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LongformerAttention(32, 0), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LongformerAttention(opts().window_size(-4)),
                       HasSubstr("window_size must be positive, got -4"));
  ATTNKIT_EXPECT_ERROR(LongformerAttention(opts().global_positions({0, -1})),
                       HasSubstr("global_positions must be >= 0, got -1"));
  ATTNKIT_EXPECT_ERROR(LongformerAttention(opts().temperature(0)),
                       HasSubstr("temperature must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LongformerAttention(opts().dropout(1)),
                       HasSubstr("dropout must be in [0, 1), got 1"));
  LongformerAttention attn(opts());
  torch::Tensor x = torch::randn({2, 5, 32});
  ATTNKIT_EXPECT_ERROR(attn->forward_global(x, torch::ones({5}, torch::kFloat)),
                       HasSubstr("global_mask of dtype bool"));
  ATTNKIT_EXPECT_ERROR(attn->forward_global(x, torch::ones({3, 5}, torch::kBool)),
                       HasSubstr("global_mask of shape [T] = [5] or [B, T] = [2, 5]"));
  ATTNKIT_EXPECT_ERROR(attn->forward_global(x, torch::Tensor()),
                       HasSubstr("global_mask is undefined"));
}

// attzoo's rope=True (interleaved pairs, theta 10000) against a naive RoPE on q and k.
TEST(LongformerAttention, MatchesNaiveWithRope) {
  torch::manual_seed(7);
  LongformerAttention attn(
      LongformerAttentionOptions(32, 4).window_size(4).global_positions({0}).rope(
          RopeOptions().style(RopeStyle::kInterleaved)));
  torch::Tensor x = torch::randn({2, 10, 32});
  auto expected = testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, 4, 1.0 / std::sqrt(8.0), x,
      [](int64_t, int64_t, int64_t i, int64_t j) {
        return std::abs(i - j) <= 2 || i == 0 || j == 0;
      },
      {}, [](const torch::Tensor& t) { return testing::naive_rope_interleaved(t, 10000.0); });
  EXPECT_LT(max_abs_diff(attn(x), expected.output), 1e-5);
  LongformerAttention plain(LongformerAttentionOptions(32, 4).window_size(4).global_positions({0}));
  testing::copy_parameters(*attn, *plain);
  EXPECT_GT(max_abs_diff(plain(x), expected.output), 1e-3);  // the rotation matters
  ATTNKIT_EXPECT_ERROR(
      LongformerAttention(
          LongformerAttentionOptions(32, 4).window_size(4).global_positions({0}).rope(
              RopeOptions().dim(3))),
      HasSubstr("LongformerAttention"), HasSubstr("rope dim must be even, got 3"));
}

}  // namespace
}  // namespace attnkit
