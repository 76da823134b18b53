#include <attnkit/attention/alibi_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"
#include "support/zoo_naive.h"

#include <cmath>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    ALiBiAttention,
    ContractCase{"symmetric", [] { return as_attention(ALiBiAttention(32, 4)); }, false},
    ContractCase{
        "causal",
        [] { return as_attention(ALiBiAttention(ALiBiAttentionOptions(32, 4).causal(true))); },
        true},
    ContractCase{"causal_six_heads_bias",
                 [] {
                   return as_attention(ALiBiAttention(
                       ALiBiAttentionOptions(24, 6).causal(true).bias(true).temperature(0.5)));
                 },
                 true, true, 2, 13});

// The paper's slopes written out per head count (Press et al., 2022, and its reference code).
std::vector<double> expected_slopes(int64_t n) {
  switch (n) {
    case 1:
      return {std::pow(2.0, -8)};
    case 2:
      return {std::pow(2.0, -4), std::pow(2.0, -8)};
    case 4:
      return {std::pow(2.0, -2), std::pow(2.0, -4), std::pow(2.0, -6), std::pow(2.0, -8)};
    case 6:  // the 4 slopes of 4, then slopes(8)[0] and slopes(8)[2]
      return {std::pow(2.0, -2), std::pow(2.0, -4), std::pow(2.0, -6),
              std::pow(2.0, -8), std::pow(2.0, -1), std::pow(2.0, -3)};
    case 8: {
      std::vector<double> s;
      for (int h = 1; h <= 8; ++h) s.push_back(std::pow(2.0, -h));
      return s;
    }
    case 16: {
      std::vector<double> s;
      for (int h = 1; h <= 16; ++h) s.push_back(std::pow(2.0, -0.5 * h));
      return s;
    }
    default:
      return {};
  }
}

// attzoo test_alibi: slopes shape/dtype fp32, monotone decreasing for H = 4, positive for
// H = 6; and the standard values for H in 1, 2, 4, 6, 8, 16.
TEST(ALiBiAttention, UpstreamSlopes) {
  for (int64_t n : {1, 2, 4, 6, 8, 16}) {
    torch::Tensor s = alibi_slopes(n);
    ASSERT_EQ(s.sizes(), torch::IntArrayRef({n}));
    EXPECT_EQ(s.scalar_type(), torch::kFloat);
    std::vector<double> e = expected_slopes(n);
    for (int64_t h = 0; h < n; ++h)
      EXPECT_FLOAT_EQ(s[h].item<float>(), float(e[h])) << n << " " << h;
  }
  torch::Tensor s4 = alibi_slopes(4);
  EXPECT_TRUE((s4.narrow(0, 0, 3) > s4.narrow(0, 1, 3)).all().item<bool>());
  EXPECT_TRUE((alibi_slopes(6) > 0).all().item<bool>());
  // 12 heads: the 8 slopes of 8, then slopes(16)[0, 2, 4, 6]
  torch::Tensor s12 = alibi_slopes(12);
  EXPECT_FLOAT_EQ(s12[8].item<float>(), float(std::pow(2.0, -0.5)));
  EXPECT_FLOAT_EQ(s12[11].item<float>(), float(std::pow(2.0, -3.5)));
}

// attzoo test_alibi: bias (H, 16, 16) has a zero diagonal, is symmetric and <= 0, with
// bias[h, 0, 1] = -m_h and bias[h, 0, 3] = -3 m_h.
TEST(ALiBiAttention, UpstreamBiasValues) {
  torch::Tensor m = alibi_slopes(4);
  torch::Tensor bias = alibi_bias(m, 16, 16);
  ASSERT_EQ(bias.sizes(), torch::IntArrayRef({4, 16, 16}));
  EXPECT_EQ(bias.diagonal(0, 1, 2).abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(torch::equal(bias, bias.transpose(1, 2)));
  EXPECT_LE(bias.max().item<float>(), 0.0f);
  for (int64_t h = 0; h < 4; ++h) {
    EXPECT_FLOAT_EQ(bias[h][0][1].item<float>(), -m[h].item<float>());
    EXPECT_FLOAT_EQ(bias[h][0][3].item<float>(), -3 * m[h].item<float>());
    EXPECT_FLOAT_EQ(bias[h][9][2].item<float>(), -7 * m[h].item<float>());
  }
  // decoding rows: 2 queries at positions 4 and 5 of 6 keys
  torch::Tensor tail = alibi_bias(m, 2, 6);
  EXPECT_TRUE(torch::equal(tail, alibi_bias(m, 6, 6).narrow(1, 4, 2)));
}

testing::NaiveZooResult naive_alibi(ALiBiAttention& attn,
                                    const torch::Tensor& x,
                                    const torch::Tensor& user_keep = {}) {
  const auto& o = attn->options;
  std::vector<double> m = expected_slopes(o.num_heads());
  const double scale = 1.0 / (std::sqrt(double(o.dim() / o.num_heads())) * o.temperature());
  return testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, o.num_heads(), scale, x,
      [&](int64_t b, int64_t, int64_t i, int64_t j) {
        return (!o.causal() || j <= i) && (!user_keep.defined() || user_keep[b][j].item<bool>());
      },
      [&](int64_t h, int64_t i, int64_t j) { return -m[h] * std::abs(double(i - j)); });
}

TEST(ALiBiAttention, MatchesNaiveReimplementation) {
  for (bool causal : {false, true}) {
    for (int64_t heads : {1, 2, 6, 8}) {
      torch::manual_seed(0);
      ALiBiAttention attn(
          ALiBiAttentionOptions(48, heads).causal(causal).bias(true).temperature(0.6));
      torch::Tensor x = torch::randn({2, 10, 48});
      AttentionOutput out = attn->forward_with_aux(x);
      auto expected = naive_alibi(attn, x);
      EXPECT_LT(max_abs_diff(out.output, expected.output), 1e-5) << causal << " H " << heads;
      EXPECT_TRUE(testing::close(out.attn_weights, expected.weights)) << causal << " H " << heads;
    }
  }
}

// attzoo test_alibi: a causal mask gives masked weights < 1e-6 (here exactly 0); a batch mask on
// the last key; the position bias makes the first row non-uniform; a lower temperature gives a
// larger max weight; long sequences need no max length.
TEST(ALiBiAttention, UpstreamMasksBiasAndTemperature) {
  torch::manual_seed(1);
  ALiBiAttention attn(32, 4);
  torch::Tensor x = torch::randn({2, 8, 32});
  torch::Tensor causal = torch::ones({8, 8}, torch::kBool).tril();
  ALiBiAttention causal_attn(ALiBiAttentionOptions(32, 4).causal(true));
  testing::copy_parameters(*attn, *causal_attn);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(testing::close(attn(x, causal), causal_attn(x)));
  torch::Tensor w = causal_attn->forward_with_aux(x).attn_weights;
  EXPECT_EQ(w.masked_select(causal.logical_not().expand_as(w)).abs().max().item<float>(), 0.0f);

  torch::Tensor keep = torch::ones({2, 8}, torch::kBool);
  keep[1][7] = false;
  auto expected = naive_alibi(attn, x, keep);
  EXPECT_LT(max_abs_diff(attn(x, keep.view({2, 1, 8}).expand({2, 8, 8})), expected.output), 1e-5);

  // identical inputs at every position: only the bias varies along the row
  torch::Tensor same = torch::randn({1, 1, 32}).expand({1, 8, 32});
  torch::Tensor w0 = attn->forward_with_aux(same).attn_weights[0][0][0];
  EXPECT_GT((w0.max() - w0.min()).item<double>(), 1e-3);
  EXPECT_GT(w0[0].item<double>(), w0[7].item<double>());

  ALiBiAttention low(ALiBiAttentionOptions(32, 4).temperature(0.1));
  testing::copy_parameters(*attn, *low);
  EXPECT_GT(low->forward_with_aux(x).attn_weights.max().item<double>(),
            attn->forward_with_aux(x).attn_weights.max().item<double>());

  torch::Tensor long_x = torch::randn({1, 300, 32});
  EXPECT_TRUE(torch::isfinite(attn(long_x)).all().item<bool>());
}

TEST(ALiBiAttention, DecodingCachesKeysAndValues) {
  ALiBiAttention attn(ALiBiAttentionOptions(32, 4).causal(true));
  DecodeState state = attn->init_state(1);
  torch::NoGradGuard no_grad;
  attn(torch::randn({1, 5, 32}), state);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"k", "v"}));
  EXPECT_EQ(state.bytes(), 2 * 5 * 32 * 4);
  ALiBiAttention symmetric(32, 4);
  EXPECT_FALSE(symmetric->supports_decoding());
}

TEST(ALiBiAttention, ParametersAndPrint) {
  ALiBiAttention attn(16, 2);
  EXPECT_EQ(attn->named_parameters().size(), 4u);
  EXPECT_EQ(attn->named_buffers().size(), 0u);
  EXPECT_NE(attn->named_parameters().find("v_proj.weight"), nullptr);
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::ALiBiAttention(dim=16, num_heads=2, causal=false, temperature=1, dropout=0, "
            "bias=false)");
}

TEST(ALiBiAttention, ErrorsNameTheArgument) {
  auto opts = [] { return ALiBiAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(ALiBiAttention(30, 4), HasSubstr("ALiBiAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(ALiBiAttention(0, 4), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(ALiBiAttention(32, 0), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(ALiBiAttention(opts().temperature(-2)),
                       HasSubstr("temperature must be positive, got -2"));
  ATTNKIT_EXPECT_ERROR(ALiBiAttention(opts().dropout(-1)),
                       HasSubstr("dropout must be in [0, 1), got -1"));
  ATTNKIT_EXPECT_ERROR(alibi_slopes(0),
                       HasSubstr("alibi_slopes: num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(alibi_bias(torch::ones({2, 2}), 3, 3), HasSubstr("slopes of shape [H]"));
  ATTNKIT_EXPECT_ERROR(alibi_bias(torch::ones({2}), 4, 3),
                       HasSubstr("seq_len_q (4) <= seq_len_kv (3)"));
}

}  // namespace
}  // namespace attnkit
