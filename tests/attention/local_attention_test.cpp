#include <attnkit/attention/local_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"
#include "support/naive.h"
#include "support/zoo_naive.h"

#include <cmath>
#include <functional>
#include <limits>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    LocalAttention,
    ContractCase{
        "non_causal",
        [] { return as_attention(LocalAttention(LocalAttentionOptions(32, 4).window_size(4))); },
        false},
    ContractCase{"causal",
                 [] {
                   return as_attention(
                       LocalAttention(LocalAttentionOptions(32, 4).window_size(6).causal(true)));
                 },
                 true},
    ContractCase{"causal_odd_window_bias",
                 [] {
                   return as_attention(LocalAttention(
                       LocalAttentionOptions(24, 3).window_size(5).causal(true).bias(true)));
                 },
                 true, true, 2, 13},
    ContractCase{
        "causal_rope",
        [] {
          return as_attention(LocalAttention(
              LocalAttentionOptions(32, 4).window_size(4).causal(true).rope(RopeOptions().dim(4))));
        },
        true},
    ContractCase{"defaults", [] { return as_attention(LocalAttention(16, 2)); }, false});

// The module's weights through the naive multi-head attention with a keep rule (b, i, j).
std::pair<torch::Tensor, torch::Tensor> naive_local(
    LocalAttention& attn,
    const torch::Tensor& x,
    const std::function<bool(int64_t, int64_t, int64_t)>& keep) {
  auto r = testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, attn->options.num_heads(),
      1.0 / (std::sqrt(double(attn->options.dim() / attn->options.num_heads())) *
             attn->options.temperature()),
      x, [&](int64_t b, int64_t, int64_t i, int64_t j) { return keep(b, i, j); });
  return {r.output, r.weights};
}

TEST(LocalAttention, MatchesNaiveReimplementation) {
  for (bool causal : {false, true}) {
    for (int64_t w : {1, 4, 5, 30}) {
      torch::manual_seed(0);
      LocalAttention attn(
          LocalAttentionOptions(32, 4).window_size(w).causal(causal).bias(true).temperature(0.7));
      torch::Tensor x = torch::randn({2, 13, 32});
      const int64_t half = w / 2;
      auto expected = naive_local(attn, x, [&](int64_t, int64_t i, int64_t j) {
        return std::abs(i - j) <= half && (!causal || j <= i);
      });
      AttentionOutput out = attn->forward_with_aux(x);
      EXPECT_LT(max_abs_diff(out.output, expected.first), 1e-5) << causal << " w " << w;
      EXPECT_TRUE(testing::close(out.attn_weights, expected.second)) << causal << " w " << w;
    }
  }
}

TEST(LocalAttention, KeepMaskIsTheExactWindow) {
  LocalAttention attn(LocalAttentionOptions(8, 2).window_size(4));
  torch::Tensor m = attn->keep_mask(7);
  LocalAttention causal(LocalAttentionOptions(8, 2).window_size(5).causal(true));
  torch::Tensor c = causal->keep_mask(7);
  for (int64_t i = 0; i < 7; ++i) {
    for (int64_t j = 0; j < 7; ++j) {
      EXPECT_EQ(m[i][j].item<bool>(), std::abs(i - j) <= 2) << i << "," << j;
      EXPECT_EQ(c[i][j].item<bool>(), j <= i && i - j <= 2) << i << "," << j;
    }
  }
}

// attzoo test_local_forward_windowing_pattern / different_window_sizes / complexity_reduction:
// inside the window the row sums to 1, outside it is exactly 0, and the number of non-zero
// weights is the clipped window width.
TEST(LocalAttention, UpstreamWindowPattern) {
  torch::manual_seed(0);
  torch::Tensor x = torch::randn({1, 12, 32});
  for (int64_t w : {2, 4, 6, 8, 12}) {
    LocalAttention attn(LocalAttentionOptions(32, 4).window_size(w));
    torch::Tensor wts = attn->forward_with_aux(x).attn_weights;
    ASSERT_EQ(wts.sizes(), torch::IntArrayRef({1, 4, 12, 12}));
    const int64_t half = w / 2;
    for (int64_t h = 0; h < 4; ++h) {
      for (int64_t i = 0; i < 12; ++i) {
        const int64_t start = std::max<int64_t>(0, i - half),
                      end = std::min<int64_t>(12, i + half + 1);
        torch::Tensor row = wts[0][h][i];
        EXPECT_NEAR(row.narrow(0, start, end - start).sum().item<double>(), 1.0, 1e-6);
        EXPECT_EQ(row.ne(0).sum().item<int64_t>(), end - start) << "w " << w << " i " << i;
      }
    }
  }
}

// attzoo test_local_forward_with_causal_mask and with_padding_mask: per-call masks combine.
TEST(LocalAttention, UpstreamCausalAndPaddingMasks) {
  torch::manual_seed(1);
  LocalAttention attn(LocalAttentionOptions(32, 4).window_size(6));
  torch::Tensor x = torch::randn({1, 8, 32});
  torch::Tensor causal = torch::ones({8, 8}, torch::kBool).tril();
  auto expected = naive_local(
      attn, x, [](int64_t, int64_t i, int64_t j) { return std::abs(i - j) <= 3 && j <= i; });
  EXPECT_LT(max_abs_diff(attn(x, causal), expected.first), 1e-5);
  // padding: the last key masked for every query
  torch::Tensor x2 = torch::randn({2, 6, 32});
  torch::Tensor pad = torch::ones({2, 6, 6}, torch::kBool);
  pad.select(2, 5).fill_(false);
  auto padded = naive_local(
      attn, x2, [](int64_t, int64_t i, int64_t j) { return std::abs(i - j) <= 3 && j != 5; });
  EXPECT_LT(max_abs_diff(attn(x2, pad), padded.first), 1e-5);
  // a float mask is additive: 0 keeps, -inf blocks (attzoo read it as a bool: the reverse)
  torch::Tensor additive = torch::zeros({8, 8}).masked_fill(
      causal.logical_not(), -std::numeric_limits<float>::infinity());
  EXPECT_LT(max_abs_diff(attn(x, additive), expected.first), 1e-5);
}

// attzoo test_local_forward_window_larger_than_sequence and single_element_window.
TEST(LocalAttention, UpstreamWindowExtremes) {
  torch::manual_seed(2);
  torch::Tensor x = torch::randn({1, 4, 32});
  LocalAttention wide(LocalAttentionOptions(32, 4).window_size(10));
  EXPECT_TRUE((wide->forward_with_aux(x).attn_weights > 0).all().item<bool>());
  LocalAttention self(LocalAttentionOptions(32, 4).window_size(1));
  torch::Tensor w = self->forward_with_aux(torch::randn({1, 6, 32})).attn_weights;
  EXPECT_TRUE(torch::equal(w[0][2], torch::eye(6)));
}

// attzoo test_local_forward_temperature_scaling: a lower temperature sharpens every row.
TEST(LocalAttention, UpstreamTemperature) {
  torch::manual_seed(3);
  LocalAttention low(LocalAttentionOptions(32, 4).window_size(4).temperature(0.1));
  LocalAttention high(LocalAttentionOptions(32, 4).window_size(4).temperature(10.0));
  testing::copy_parameters(*low, *high);
  torch::Tensor x = torch::randn({1, 6, 32});
  torch::Tensor max_low = std::get<0>(low->forward_with_aux(x).attn_weights.max(-1));
  torch::Tensor max_high = std::get<0>(high->forward_with_aux(x).attn_weights.max(-1));
  EXPECT_TRUE((max_low >= max_high).all().item<bool>());
  EXPECT_GT((max_low - max_high).max().item<double>(), 0.1);
}

TEST(LocalAttention, DecodeCacheHoldsOnlyTheWindow) {
  torch::manual_seed(4);
  LocalAttention attn(LocalAttentionOptions(32, 4).window_size(6).causal(true));
  DecodeState state = attn->init_state(1);
  torch::NoGradGuard no_grad;
  attn(torch::randn({1, 2, 32}), state);
  EXPECT_EQ(state.bytes(), 2 * 2 * 32 * 4);  // k and v of 2 tokens
  attn(torch::randn({1, 20, 32}), state);
  EXPECT_EQ(state.bytes(), 2 * 3 * 32 * 4);  // capped at window_size / 2 = 3 tokens
  for (int i = 0; i < 5; ++i) attn(torch::randn({1, 1, 32}), state);
  EXPECT_EQ(state.bytes(), 2 * 3 * 32 * 4);
  EXPECT_EQ(state.length(), 27);
  LocalAttention bidirectional(32, 4);
  EXPECT_FALSE(bidirectional->supports_decoding());
  ATTNKIT_EXPECT_ERROR(bidirectional->init_state(1), HasSubstr("LocalAttention"),
                       HasSubstr("causal"));
}

TEST(LocalAttention, ParametersAndPrint) {
  LocalAttention attn(16, 2);
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), 4u);
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) {
    ASSERT_NE(params.find(name), nullptr) << name;
    EXPECT_EQ(params.find(name)->sizes(), torch::IntArrayRef({16, 16}));
  }
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::LocalAttention(dim=16, num_heads=2, window_size=128, causal=false, "
            "temperature=1, dropout=0, bias=false, rope=none)");
}

// Every argument with invalid values (causal and bias have none).
TEST(LocalAttention, ErrorsNameTheArgument) {
  auto opts = [] { return LocalAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(LocalAttention(30, 4), HasSubstr("LocalAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(LocalAttention(0, 4), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LocalAttention(32, -1), HasSubstr("num_heads must be positive, got -1"));
  ATTNKIT_EXPECT_ERROR(LocalAttention(opts().window_size(0)),
                       HasSubstr("window_size must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LocalAttention(opts().temperature(0)),
                       HasSubstr("temperature must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LocalAttention(opts().dropout(1.0)),
                       HasSubstr("dropout must be in [0, 1), got 1"));
  ATTNKIT_EXPECT_ERROR(LocalAttention(opts())->keep_mask(0),
                       HasSubstr("seq_len must be positive, got 0"));
}

// attzoo's rope=True (interleaved pairs, theta 10000) against a naive RoPE on q and k.
TEST(LocalAttention, MatchesNaiveWithRope) {
  torch::manual_seed(7);
  LocalAttention attn(LocalAttentionOptions(32, 4).window_size(5).rope(
      RopeOptions().style(RopeStyle::kInterleaved)));
  torch::Tensor x = torch::randn({2, 10, 32});
  auto expected = testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, 4, 1.0 / std::sqrt(8.0), x,
      [](int64_t, int64_t, int64_t i, int64_t j) { return std::abs(i - j) <= 2; }, {},
      [](const torch::Tensor& t) { return testing::naive_rope_interleaved(t, 10000.0); });
  EXPECT_LT(max_abs_diff(attn(x), expected.output), 1e-5);
  LocalAttention plain(LocalAttentionOptions(32, 4).window_size(5));
  testing::copy_parameters(*attn, *plain);
  EXPECT_GT(max_abs_diff(plain(x), expected.output), 1e-3);  // the rotation matters
  ATTNKIT_EXPECT_ERROR(
      LocalAttention(LocalAttentionOptions(32, 4).window_size(5).rope(RopeOptions().dim(3))),
      HasSubstr("LocalAttention"), HasSubstr("rope dim must be even, got 3"));
}

}  // namespace
}  // namespace attnkit
