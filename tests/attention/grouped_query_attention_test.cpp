#include <attnkit/attention/grouped_query_attention.h>

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

GroupedQueryAttentionOptions full_options() {
  return GroupedQueryAttentionOptions(/*dim=*/48, /*num_heads=*/4, /*num_kv_heads=*/2)
      .head_dim(16)
      .causal(true)
      .qk_norm_eps(1e-6)
      .rope(RopeOptions().dim(8).theta(500.0))
      .output_gate(true)
      .sinks(true);
}

ATTNKIT_CONTRACT_SUITE(
    GroupedQueryAttention,
    ContractCase{"plain_causal",
                 [] {
                   return as_attention(
                       GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 2).causal(true)));
                 },
                 true},
    ContractCase{"non_causal_bias",
                 [] {
                   return as_attention(
                       GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 1).bias(true)));
                 },
                 false},
    ContractCase{"every_feature",
                 [] { return as_attention(GroupedQueryAttention(full_options())); }, true},
    ContractCase{"window_zero_centered",
                 [] {
                   return as_attention(GroupedQueryAttention(
                       GroupedQueryAttentionOptions(32, 8, 2)
                           .causal(true)
                           .window_left(3)
                           .qk_norm_eps(1e-5)
                           .qk_norm_zero_centered(true)
                           .rope(RopeOptions().style(RopeStyle::kInterleaved))));
                 },
                 true},
    ContractCase{"every_feature_temperature",
                 [] {
                   return as_attention(GroupedQueryAttention(full_options().temperature(0.6)));
                 },
                 true});

// The module against a loop re-implementation of docs/catalog.md, "Grouped-query attention",
// on the same weights.
TEST(GroupedQueryAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  GroupedQueryAttention attn(full_options());
  attn->eval();
  {
    torch::NoGradGuard no_grad;  // non-trivial norm weights and sinks
    attn->q_norm->weight.uniform_(0.5, 1.5);
    attn->k_norm->weight.uniform_(0.5, 1.5);
    attn->sinks.uniform_(-1, 1);
  }
  const int64_t B = 2, T = 9, H = 4, Hkv = 2, hd = 16;
  torch::Tensor x = torch::randn({B, T, 48});
  torch::Tensor y = attn(x);

  torch::NoGradGuard no_grad;
  torch::Tensor xd = x.to(torch::kDouble);
  auto lin = [&](const torch::nn::Linear& l) {
    return xd.matmul(l->weight.to(torch::kDouble).t());
  };
  torch::Tensor q =
      testing::naive_rms_norm(lin(attn->q_proj).view({B, T, H, hd}), attn->q_norm->weight, 1e-6);
  torch::Tensor k =
      testing::naive_rms_norm(lin(attn->k_proj).view({B, T, Hkv, hd}), attn->k_norm->weight, 1e-6);
  torch::Tensor v = lin(attn->v_proj).view({B, T, Hkv, hd});
  q = testing::naive_rope_half(q, 8, 500.0);
  k = testing::naive_rope_half(k, 8, 500.0);
  torch::Tensor o =
      testing::naive_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               1.0 / std::sqrt(16.0), /*causal=*/true, -1, attn->sinks);
  o = o.transpose(1, 2).reshape({B, T, H * hd}) * torch::sigmoid(lin(attn->gate_proj));
  torch::Tensor expected = o.matmul(attn->o_proj->weight.to(torch::kDouble).t());
  EXPECT_LT(max_abs_diff(y, expected), 1e-5);
}

// temperature t (attzoo's GroupedSelfAttention): logits q.k / (sqrt(hd) * t); sinks and an
// additive mask are not divided. Against plain torch ops on the module's weights, in double.
TEST(GroupedQueryAttention, TemperatureMatchesNaiveReimplementation) {
  torch::manual_seed(7);
  const int64_t B = 2, T = 6, H = 4, Hkv = 2, hd = 8;
  const double t = 0.6;
  GroupedQueryAttention attn(GroupedQueryAttentionOptions(32, H, Hkv).bias(true).temperature(t));
  attn->to(torch::kDouble);
  torch::Tensor x = torch::randn({B, T, 32}, torch::kDouble);
  torch::Tensor additive = torch::randn({B, T, T}, torch::kDouble);
  torch::NoGradGuard no_grad;
  auto heads = [&](torch::nn::Linear l, int64_t n) {
    return l(x).view({B, T, n, hd}).transpose(1, 2);
  };
  torch::Tensor q = heads(attn->q_proj, H);
  torch::Tensor k = heads(attn->k_proj, Hkv).repeat_interleave(H / Hkv, 1);  // [B, H, T, hd]
  torch::Tensor v = heads(attn->v_proj, Hkv).repeat_interleave(H / Hkv, 1);
  torch::Tensor w = torch::softmax(
      q.matmul(k.transpose(-1, -2)) / (std::sqrt(double(hd)) * t) + additive.unsqueeze(1), -1);
  torch::Tensor expected = attn->o_proj(w.matmul(v).transpose(1, 2).reshape({B, T, H * hd}));
  EXPECT_LT(max_abs_diff(attn(x, additive), expected), 1e-12);

  // every other option at once (norms, rope, gate, sinks), causal, through the loop reference
  GroupedQueryAttention full(full_options().temperature(t));
  full->to(torch::kDouble);
  full->q_norm->weight.uniform_(0.5, 1.5);
  full->k_norm->weight.uniform_(0.5, 1.5);
  full->sinks.uniform_(-1, 1);
  torch::Tensor xf = torch::randn({B, T, 48}, torch::kDouble);
  auto lin = [&](torch::nn::Linear l, int64_t n) { return l(xf).view({B, T, n, 16}); };
  torch::Tensor qf = testing::naive_rope_half(
      testing::naive_rms_norm(lin(full->q_proj, H), full->q_norm->weight, 1e-6), 8, 500.0);
  torch::Tensor kf = testing::naive_rope_half(
      testing::naive_rms_norm(lin(full->k_proj, Hkv), full->k_norm->weight, 1e-6), 8, 500.0);
  torch::Tensor o = testing::naive_attention(qf.transpose(1, 2), kf.transpose(1, 2),
                                             lin(full->v_proj, Hkv).transpose(1, 2),
                                             1.0 / (4.0 * t), /*causal=*/true, -1, full->sinks);
  o = o.transpose(1, 2).reshape({B, T, H * 16}) * torch::sigmoid(full->gate_proj(xf));
  torch::Tensor y = full(xf);
  EXPECT_LT(max_abs_diff(y, full->o_proj(o)), 1e-12);
  // decoding rotates at absolute positions and keeps the temperature
  DecodeState state = full->init_state(B);
  std::vector<torch::Tensor> parts = {full(xf.narrow(1, 0, 2), state)};
  for (int64_t i = 2; i < T; ++i) parts.push_back(full(xf.narrow(1, i, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), y), 1e-12);
}

TEST(GroupedQueryAttention, DefaultTemperatureIsThePlainModule) {
  torch::manual_seed(8);
  GroupedQueryAttention plain(GroupedQueryAttentionOptions(32, 4, 2).causal(true));
  GroupedQueryAttention one(GroupedQueryAttentionOptions(32, 4, 2).causal(true).temperature(1.0));
  testing::copy_parameters(*plain, *one);
  torch::Tensor x = torch::randn({2, 5, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(plain(x), one(x)));
  EXPECT_TRUE(torch::equal(plain->forward_with_aux(x).attn_weights,
                           one->forward_with_aux(x).attn_weights));
}

TEST(GroupedQueryAttention, ParameterNamesFollowCheckpoints) {
  GroupedQueryAttention attn(full_options());
  std::map<std::string, std::vector<int64_t>> expected = {
      {"q_proj.weight", {64, 48}},    {"k_proj.weight", {32, 48}},
      {"v_proj.weight", {32, 48}},    {"o_proj.weight", {48, 64}},
      {"gate_proj.weight", {64, 48}}, {"q_norm.weight", {16}},
      {"k_norm.weight", {16}},        {"sinks", {4}}};
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
}

TEST(GroupedQueryAttention, WindowIsExactAtItsEdges) {
  torch::manual_seed(1);
  const int64_t w = 3, T = 10;
  GroupedQueryAttention attn(GroupedQueryAttentionOptions(32, 4, 2).causal(true).window_left(w));
  torch::Tensor weights = attn->forward_with_aux(torch::randn({1, T, 32})).attn_weights;
  ASSERT_EQ(weights.sizes(), torch::IntArrayRef({1, 4, T, T}));
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) {
      const bool visible = j <= i && j >= i - w;
      const double wij = weights[0][1][i][j].item<double>();
      if (visible) {
        EXPECT_GT(wij, 0.0) << i << "," << j;
      } else {
        EXPECT_EQ(wij, 0.0) << i << "," << j;
      }
    }
  }
  EXPECT_TRUE(testing::close(weights.sum(-1), torch::ones({1, 4, T})));
}

TEST(GroupedQueryAttention, HugeSinkDrivesOutputToZero) {
  torch::manual_seed(2);
  GroupedQueryAttention attn(GroupedQueryAttentionOptions(32, 4, 2).causal(true).sinks(true));
  torch::Tensor x = torch::randn({1, 6, 32});
  torch::NoGradGuard no_grad;
  attn->sinks.fill_(-std::numeric_limits<float>::infinity());
  GroupedQueryAttention no_sink(GroupedQueryAttentionOptions(32, 4, 2).causal(true));
  for (auto& name : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
    no_sink->named_parameters()[std::string(name) + ".weight"].copy_(
        attn->named_parameters()[std::string(name) + ".weight"]);
  }
  EXPECT_TRUE(testing::close(attn(x), no_sink(x))) << "a -inf sink must equal no sink";
  attn->sinks.fill_(1e4);
  EXPECT_LT(attn(x).abs().max().item<double>(), 1e-6);
}

TEST(GroupedQueryAttention, KvCacheBytesPerToken) {
  GroupedQueryAttention attn(GroupedQueryAttentionOptions(64, 8, 2).causal(true));
  DecodeState state = attn->init_state(1);
  torch::NoGradGuard no_grad;
  attn->forward(torch::randn({1, 7, 64}), state);
  // k and v: 2 kv heads x 8 channels x 4 bytes each, per token
  EXPECT_EQ(state.bytes(), 7 * 2 * 2 * 8 * 4);
}

TEST(GroupedQueryAttention, ConstructorErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(GroupedQueryAttention(GroupedQueryAttentionOptions(30, 4, 2)),
                       HasSubstr("GroupedQueryAttention"), HasSubstr("dim (30)"),
                       HasSubstr("num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(GroupedQueryAttention(GroupedQueryAttentionOptions(32, 8, 3)),
                       HasSubstr("num_heads (8) must be divisible by num_kv_heads (3)"));
  ATTNKIT_EXPECT_ERROR(
      GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 2).rope(RopeOptions().dim(3))),
      HasSubstr("GroupedQueryAttention"), HasSubstr("rope dim must be even, got 3"));
  ATTNKIT_EXPECT_ERROR(
      GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 2).rope(RopeOptions().dim(10))),
      HasSubstr("rope dim (10) must be <= head_dim (8)"));
  ATTNKIT_EXPECT_ERROR(GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 2).dropout(1.5)),
                       HasSubstr("dropout"));
  ATTNKIT_EXPECT_ERROR(
      GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 2).temperature(0)),
      HasSubstr("GroupedQueryAttention: temperature must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(
      GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 2).temperature(-2)),
      HasSubstr("GroupedQueryAttention: temperature must be positive, got -2"));
  ATTNKIT_EXPECT_ERROR(
      GroupedQueryAttention(GroupedQueryAttentionOptions(32, 4, 2).causal(true).window_right(2)),
      HasSubstr("window_right"));
}

TEST(GroupedQueryAttention, DecodingNeedsCausal) {
  GroupedQueryAttention attn(GroupedQueryAttentionOptions(32, 4, 2));
  EXPECT_FALSE(attn->supports_decoding());
  ATTNKIT_EXPECT_ERROR(attn->init_state(1), HasSubstr("causal"));
}

TEST(GroupedQueryAttention, FollowsInputDtypeAndRejectsMismatch) {
  GroupedQueryAttention attn(GroupedQueryAttentionOptions(32, 4, 2));
  ATTNKIT_EXPECT_ERROR(attn(torch::randn({1, 3, 32}, torch::kDouble)),
                       HasSubstr("move the module"));
  attn->to(torch::kDouble);
  EXPECT_EQ(attn(torch::randn({1, 3, 32}, torch::kDouble)).scalar_type(), torch::kDouble);
}

TEST(GroupedQueryAttention, PrettyPrintShowsEveryOption) {
  std::ostringstream s;
  GroupedQueryAttention(full_options())->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::GroupedQueryAttention(dim=48, num_heads=4, num_kv_heads=2, head_dim=16, "
            "causal=true, dropout=0, temperature=1, bias=false, qk_norm_eps=1e-06, "
            "qk_norm_zero_centered=false, "
            "rope=rope(dim=8, style=half, channels=first, theta=500, scaling=none), "
            "output_gate=true, window_left=none, window_right=none, sinks=true)");
}

TEST(GroupedQueryAttention, CloneIsDeep) {
  GroupedQueryAttention attn(full_options());
  auto copy = std::dynamic_pointer_cast<GroupedQueryAttentionImpl>(attn->clone());
  ASSERT_NE(copy, nullptr);
  torch::Tensor x = torch::randn({1, 4, 48});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(attn(x), copy->forward(x)));
  copy->q_proj->weight.add_(1.0);
  EXPECT_FALSE(torch::allclose(attn(x), copy->forward(x)));
}

}  // namespace
}  // namespace attnkit
