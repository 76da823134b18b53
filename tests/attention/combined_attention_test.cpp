#include <attnkit/attention/combined_attention.h>

#include <attnkit/attention/alibi_attention.h>
#include <attnkit/attention/linear_attention.h>
#include <attnkit/attention/local_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"

#include <cmath>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    CombinedAttention,
    ContractCase{"local_alibi",
                 [] {
                   return as_attention(CombinedAttention(
                       as_attention(LocalAttention(LocalAttentionOptions(32, 4).window_size(4))),
                       as_attention(ALiBiAttention(32, 2))));
                 },
                 false},
    ContractCase{"causal_local_linear_hidden_gate",
                 [] {
                   return as_attention(CombinedAttention(
                       as_attention(LocalAttention(
                           LocalAttentionOptions(24, 3).window_size(4).causal(true))),
                       as_attention(LinearAttention(LinearAttentionOptions(24, 2).causal(true))),
                       CombinedAttentionOptions().gate_hidden(6)));
                 },
                 true, true, 2, 13});

CombinedAttention make_mix() {
  return CombinedAttention(
      as_attention(LocalAttention(LocalAttentionOptions(32, 4).window_size(4))),
      as_attention(ALiBiAttention(32, 2)));
}

// y = g * A(x) + (1 - g) * B(x), g = sigmoid(w . x + b), the gate computed by hand.
TEST(CombinedAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  CombinedAttention mix = make_mix();
  torch::Tensor x = torch::randn({2, 8, 32});
  torch::NoGradGuard no_grad;
  torch::Tensor a = mix->attn_a(x).to(torch::kDouble), b = mix->attn_b(x).to(torch::kDouble);
  auto params = mix->named_parameters();
  torch::Tensor w = params["gate.0.weight"].to(torch::kDouble);
  const double bias = params["gate.0.bias"].item<double>();
  torch::Tensor expected = torch::zeros({2, 8, 32}, torch::kDouble);
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t t = 0; t < 8; ++t) {
      double z = bias;
      for (int64_t d = 0; d < 32; ++d) z += w[0][d].item<double>() * x[n][t][d].item<double>();
      const double g = 1.0 / (1.0 + std::exp(-z));
      expected[n][t] = g * a[n][t] + (1 - g) * b[n][t];
    }
  }
  EXPECT_LT(max_abs_diff(mix(x), expected), 1e-5);
  CombinedAttentionOutput aux = mix->forward_with_aux_combined(x);
  EXPECT_LT(max_abs_diff(aux.output, expected), 1e-5);
  EXPECT_TRUE(torch::equal(aux.attn_weights, mix->attn_a->forward_with_aux(x).attn_weights));
  EXPECT_EQ(aux.attn_weights_b.sizes(), torch::IntArrayRef({2, 2, 8, 8}));
  EXPECT_TRUE(torch::equal(mix->forward_with_aux(x).attn_weights, aux.attn_weights));
  // a mask reaches both modules
  torch::Tensor keep = torch::ones({8, 8}, torch::kBool).tril();
  torch::Tensor g = mix->gate_values(x);
  EXPECT_TRUE(testing::close(mix(x, keep), g * mix->attn_a(x, keep) + (1 - g) * mix->attn_b(x, keep)));
}

TEST(CombinedAttention, ParametersPrintAndClone) {
  CombinedAttention mix = make_mix();
  auto params = mix->named_parameters();
  EXPECT_EQ(params.size(), 10u);
  EXPECT_NE(params.find("attn_a.q_proj.weight"), nullptr);
  EXPECT_NE(params.find("attn_b.o_proj.weight"), nullptr);
  EXPECT_EQ(params.find("gate.0.weight")->sizes(), torch::IntArrayRef({1, 32}));
  EXPECT_FALSE(mix->supports_decoding());
  std::ostringstream s;
  mix->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::CombinedAttention(attn_a=LocalAttention, attn_b=ALiBiAttention, dim=32, "
            "gate_hidden=0, gate_bias=true, dropout=0)");
  auto copy = std::dynamic_pointer_cast<CombinedAttentionImpl>(mix->clone());
  ASSERT_NE(copy, nullptr);
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({1, 5, 32});
  EXPECT_TRUE(torch::equal(copy->forward(x), mix(x)));
  copy->named_parameters()["attn_b.q_proj.weight"].add_(1.0);
  EXPECT_FALSE(torch::equal(copy->forward(x), mix(x)));
}

TEST(CombinedAttention, ErrorsNameTheArgument) {
  auto local = [] { return as_attention(LocalAttention(32, 4)); };
  ATTNKIT_EXPECT_ERROR(CombinedAttention(local(), as_attention(ALiBiAttention(16, 2))),
                       HasSubstr("CombinedAttention"),
                       HasSubstr("attn_a.dim() (32) and attn_b.dim() (16) must match"));
  ATTNKIT_EXPECT_ERROR(CombinedAttention(Attention(nullptr), local()),
                       HasSubstr("attn_a is an empty holder"));
  ATTNKIT_EXPECT_ERROR(CombinedAttention(local(), Attention(nullptr)),
                       HasSubstr("attn_b is an empty holder"));
  ATTNKIT_EXPECT_ERROR(
      CombinedAttention(local(), local(), CombinedAttentionOptions().gate_hidden(-2)),
      HasSubstr("gate_hidden must be >= 0 (0 = one Linear), got -2"));
  ATTNKIT_EXPECT_ERROR(CombinedAttention(local(), local(), CombinedAttentionOptions().dropout(-1)),
                       HasSubstr("dropout must be in [0, 1), got -1"));
  ATTNKIT_EXPECT_ERROR(
      CombinedAttention(local(), local(), CombinedAttentionOptions().residual_proj(true)),
      HasSubstr("residual_proj must be false"));
  ATTNKIT_EXPECT_ERROR(CombinedAttention(local(), local())->init_state(1),
                       HasSubstr("CombinedAttention"));
}

}  // namespace
}  // namespace attnkit
