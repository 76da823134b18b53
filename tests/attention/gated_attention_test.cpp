#include <attnkit/attention/gated_attention.h>

#include <attnkit/attention/alibi_attention.h>
#include <attnkit/attention/linear_attention.h>
#include <attnkit/attention/local_attention.h>

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

Attention local_causal() {
  return as_attention(LocalAttention(LocalAttentionOptions(32, 4).window_size(6).causal(true)));
}

ATTNKIT_CONTRACT_SUITE(
    GatedAttention,
    ContractCase{"local_causal", [] { return as_attention(GatedAttention(local_causal())); }, true},
    ContractCase{"alibi_hidden_gate_x_proj",
                 [] {
                   return as_attention(
                       GatedAttention(as_attention(ALiBiAttention(32, 4)),
                                      GatedAttentionOptions().gate_hidden(8).residual_proj(true)));
                 },
                 false},
    ContractCase{"linear_causal_no_gate_bias",
                 [] {
                   return as_attention(GatedAttention(
                       as_attention(LinearAttention(LinearAttentionOptions(24, 3).causal(true))),
                       GatedAttentionOptions().gate_bias(false)));
                 },
                 true, true, 2, 13});

// y = g * attn(x) + (1 - g) * x with g = sigmoid(w . x + b), the gate computed by hand.
TEST(GatedAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  GatedAttention gated(local_causal());
  torch::Tensor x = torch::randn({2, 9, 32});
  torch::NoGradGuard no_grad;
  torch::Tensor attended = gated->attn(x).to(torch::kDouble);
  auto params = gated->named_parameters();
  torch::Tensor w = params["gate.0.weight"].to(torch::kDouble);  // [1, 32]
  double b = params["gate.0.bias"].item<double>();
  torch::Tensor xd = x.to(torch::kDouble);
  torch::Tensor expected = torch::zeros({2, 9, 32}, torch::kDouble);
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t t = 0; t < 9; ++t) {
      double z = b;
      for (int64_t d = 0; d < 32; ++d) z += w[0][d].item<double>() * xd[n][t][d].item<double>();
      const double g = 1.0 / (1.0 + std::exp(-z));
      expected[n][t] = g * attended[n][t] + (1 - g) * xd[n][t];
    }
  }
  EXPECT_LT(max_abs_diff(gated(x), expected), 1e-5);
  GatedAttentionOutput aux = gated->forward_with_aux_gated(x);
  EXPECT_LT(max_abs_diff(aux.output, expected), 1e-5);
  EXPECT_EQ(aux.gate.sizes(), torch::IntArrayRef({2, 9, 1}));
  EXPECT_TRUE(torch::equal(aux.attn_weights, gated->attn->forward_with_aux(x).attn_weights));
}

// attzoo test_exports / gated: an open gate passes the attention through, a closed gate passes
// the input (or x_proj(x)) through.
TEST(GatedAttention, GateOpensAndCloses) {
  torch::manual_seed(1);
  GatedAttention gated(as_attention(LocalAttention(LocalAttentionOptions(32, 4).window_size(4))),
                       GatedAttentionOptions().residual_proj(true));
  torch::Tensor x = torch::randn({1, 7, 32});
  torch::NoGradGuard no_grad;
  auto params = gated->named_parameters();
  params["gate.0.weight"].zero_();
  params["gate.0.bias"].fill_(40.0);
  EXPECT_TRUE(testing::close(gated(x), gated->attn(x)));
  params["gate.0.bias"].fill_(-40.0);
  EXPECT_TRUE(testing::close(gated(x), gated->x_proj(x)));
  params["gate.0.bias"].fill_(0.0);  // g = 1/2
  EXPECT_TRUE(testing::close(gated(x), 0.5 * (gated->attn(x) + gated->x_proj(x))));
}

TEST(GatedAttention, ParametersPrintAndClone) {
  GatedAttention gated(as_attention(LocalAttention(16, 2)), GatedAttentionOptions().gate_hidden(5));
  auto params = gated->named_parameters();
  EXPECT_EQ(params.size(), 8u);
  EXPECT_EQ(params.find("attn.q_proj.weight")->sizes(), torch::IntArrayRef({16, 16}));
  EXPECT_EQ(params.find("gate.0.weight")->sizes(), torch::IntArrayRef({5, 16}));
  EXPECT_EQ(params.find("gate.3.weight")->sizes(), torch::IntArrayRef({1, 5}));
  EXPECT_NE(params.find("gate.3.bias"), nullptr);
  EXPECT_EQ(params.find("x_proj.weight"), nullptr);
  std::ostringstream s;
  gated->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::GatedAttention(attn=LocalAttention, dim=16, gate_hidden=5, gate_bias=true, "
            "dropout=0, residual_proj=false)");

  auto copy = std::dynamic_pointer_cast<GatedAttentionImpl>(gated->clone());
  ASSERT_NE(copy, nullptr);
  torch::Tensor x = torch::randn({1, 5, 16});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(copy->forward(x), gated(x)));
  copy->named_parameters()["attn.q_proj.weight"].add_(1.0);  // a deep copy: the original stays
  copy->named_parameters()["gate.0.weight"].add_(1.0);
  EXPECT_FALSE(torch::equal(gated->named_parameters()["attn.q_proj.weight"],
                            copy->named_parameters()["attn.q_proj.weight"]));
  EXPECT_FALSE(torch::equal(gated->named_parameters()["gate.0.weight"],
                            copy->named_parameters()["gate.0.weight"]));
}

TEST(GatedAttention, ErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(GatedAttention(Attention(nullptr)), HasSubstr("GatedAttention"),
                       HasSubstr("attn is an empty holder"));
  ATTNKIT_EXPECT_ERROR(GatedAttention(local_causal(), GatedAttentionOptions().gate_hidden(-1)),
                       HasSubstr("gate_hidden must be >= 0 (0 = one Linear), got -1"));
  ATTNKIT_EXPECT_ERROR(GatedAttention(local_causal(), GatedAttentionOptions().dropout(1.5)),
                       HasSubstr("dropout must be in [0, 1), got 1.5"));
  GatedAttention bidirectional(as_attention(LocalAttention(32, 4)));
  EXPECT_FALSE(bidirectional->supports_decoding());
  ATTNKIT_EXPECT_ERROR(bidirectional->init_state(1), HasSubstr("GatedAttention"),
                       HasSubstr("LocalAttention does not support decoding"));
  // the wrapped module's own errors name both
  ATTNKIT_EXPECT_ERROR(bidirectional(torch::randn({1, 4, 32}), torch::ones({3, 4}, torch::kBool)),
                       HasSubstr("GatedAttention: LocalAttention"));
}

}  // namespace
}  // namespace attnkit
