#include <attnkit/attention/multi_head_latent_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/naive.h"

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

MultiHeadLatentAttentionOptions small_options() {
  return MultiHeadLatentAttentionOptions(/*dim=*/48, /*num_heads=*/4)
      .q_lora_rank(24)
      .kv_lora_rank(16)
      .qk_nope_head_dim(8)
      .qk_rope_head_dim(6)
      .v_head_dim(10);
}

ATTNKIT_CONTRACT_SUITE(
    MultiHeadLatentAttention,
    ContractCase{"q_lora", [] { return as_attention(MultiHeadLatentAttention(small_options())); },
                 true},
    ContractCase{"direct_q_defaults", [] { return as_attention(MultiHeadLatentAttention(64, 4)); },
                 true},
    ContractCase{"non_causal_half_rope",
                 [] {
                   return as_attention(MultiHeadLatentAttention(
                       small_options().causal(false).rope(RopeOptions().style(RopeStyle::kHalf))));
                 },
                 false},
    ContractCase{"q_lora_bias",
                 [] { return as_attention(MultiHeadLatentAttention(small_options().bias(true))); },
                 true},
    ContractCase{"direct_q_bias",
                 [] {
                   return as_attention(MultiHeadLatentAttention(
                       MultiHeadLatentAttentionOptions(64, 4).bias(true)));
                 },
                 true});

// docs/catalog.md, "Multi-head latent attention", with DeepSeek's layouts, by hand on the
// module's weights.
TEST(MultiHeadLatentAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  MultiHeadLatentAttention attn(small_options());
  {
    torch::NoGradGuard no_grad;
    attn->q_a_layernorm->weight.uniform_(0.5, 1.5);
    attn->kv_a_layernorm->weight.uniform_(0.5, 1.5);
  }
  const int64_t B = 2, T = 8, H = 4, nope = 8, rope = 6, vd = 10, kv_lora = 16;
  torch::Tensor x = torch::randn({B, T, 48});
  torch::Tensor y = attn(x);

  torch::NoGradGuard no_grad;
  auto W = [](const torch::nn::Linear& l) { return l->weight.to(torch::kDouble).t(); };
  torch::Tensor xd = x.to(torch::kDouble);
  torch::Tensor cq =
      testing::naive_rms_norm(xd.matmul(W(attn->q_a_proj)), attn->q_a_layernorm->weight, 1e-6);
  torch::Tensor q = cq.matmul(W(attn->q_b_proj)).view({B, T, H, nope + rope});
  torch::Tensor ckv = xd.matmul(W(attn->kv_a_proj_with_mqa));  // [latent | rope key]
  torch::Tensor latent =
      testing::naive_rms_norm(ckv.narrow(-1, 0, kv_lora), attn->kv_a_layernorm->weight, 1e-6);
  torch::Tensor k_rope =
      testing::naive_rope_interleaved(ckv.narrow(-1, kv_lora, rope).view({B, T, 1, rope}), 1e4);
  torch::Tensor q_rope = testing::naive_rope_interleaved(q.narrow(-1, nope, rope), 1e4);
  torch::Tensor kv = latent.matmul(W(attn->kv_b_proj)).view({B, T, H, nope + vd});
  torch::Tensor qf = torch::cat({q.narrow(-1, 0, nope), q_rope}, -1);
  torch::Tensor kf = torch::cat({kv.narrow(-1, 0, nope), k_rope.expand({B, T, H, rope})}, -1);
  torch::Tensor v = kv.narrow(-1, nope, vd);
  torch::Tensor o =
      testing::naive_attention(qf.transpose(1, 2), kf.transpose(1, 2), v.transpose(1, 2),
                               1.0 / std::sqrt(double(nope + rope)), true);
  torch::Tensor expected = o.transpose(1, 2).reshape({B, T, H * vd}).matmul(W(attn->o_proj));
  EXPECT_LT(max_abs_diff(y, expected), 1e-5);
}

// attnhut's MLA(bias=True): every Linear (q_down, q_up, kv_down, kv_up, proj) carries a bias, the
// RMSNorm weights do not. By hand in plain torch ops on the module's weights, in double; the
// absorbed decode path must give the same outputs.
TEST(MultiHeadLatentAttention, BiasMatchesNaiveReimplementation) {
  torch::manual_seed(3);
  MultiHeadLatentAttention attn(
      small_options().bias(true).rope(RopeOptions().style(RopeStyle::kHalf)));
  attn->to(torch::kDouble);
  const int64_t B = 2, T = 7, H = 4, nope = 8, rope = 6, vd = 10, kv_lora = 16;
  torch::NoGradGuard no_grad;
  for (auto* p : {&attn->q_a_proj, &attn->q_b_proj, &attn->kv_a_proj_with_mqa, &attn->kv_b_proj,
                  &attn->o_proj}) {
    ASSERT_TRUE((*p)->bias.defined());
    (*p)->bias.uniform_(-1, 1);  // large enough to matter
  }
  torch::Tensor x = torch::randn({B, T, 48}, torch::kDouble);
  auto lin = [](const torch::Tensor& in, torch::nn::Linear l) {
    return in.matmul(l->weight.t()) + l->bias;
  };
  torch::Tensor cq =
      testing::naive_rms_norm(lin(x, attn->q_a_proj), attn->q_a_layernorm->weight, 1e-6);
  torch::Tensor q = lin(cq, attn->q_b_proj).view({B, T, H, nope + rope});
  torch::Tensor ckv = lin(x, attn->kv_a_proj_with_mqa);  // [latent | rope key]
  torch::Tensor latent =
      testing::naive_rms_norm(ckv.narrow(-1, 0, kv_lora), attn->kv_a_layernorm->weight, 1e-6);
  torch::Tensor k_rope =
      testing::naive_rope_half(ckv.narrow(-1, kv_lora, rope).view({B, T, 1, rope}), rope, 1e4);
  torch::Tensor q_rope = testing::naive_rope_half(q.narrow(-1, nope, rope), rope, 1e4);
  torch::Tensor kv = lin(latent, attn->kv_b_proj).view({B, T, H, nope + vd});
  torch::Tensor qf = torch::cat({q.narrow(-1, 0, nope), q_rope}, -1);
  torch::Tensor kf = torch::cat({kv.narrow(-1, 0, nope), k_rope.expand({B, T, H, rope})}, -1);
  torch::Tensor v = kv.narrow(-1, nope, vd);
  torch::Tensor o =
      testing::naive_attention(qf.transpose(1, 2), kf.transpose(1, 2), v.transpose(1, 2),
                               1.0 / std::sqrt(double(nope + rope)), true);
  torch::Tensor expected = lin(o.transpose(1, 2).reshape({B, T, H * vd}), attn->o_proj);
  torch::Tensor y = attn(x);
  EXPECT_LT(max_abs_diff(y, expected), 1e-12);

  DecodeState state = attn->init_state(B);
  std::vector<torch::Tensor> parts = {attn(x.narrow(1, 0, 3), state)};
  for (int64_t t = 3; t < T; ++t) parts.push_back(attn(x.narrow(1, t, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), y), 1e-12);
}

TEST(MultiHeadLatentAttention, BiasOptionRegistersABiasOnEveryProjection) {
  MultiHeadLatentAttention plain(small_options());
  for (const auto& p : plain->named_parameters()) {
    EXPECT_EQ(p.key().find(".bias"), std::string::npos) << p.key();  // default: none
  }
  MultiHeadLatentAttention biased(small_options().bias(true));
  auto params = biased->named_parameters();
  EXPECT_EQ(params.size(), 7u + 5u);
  for (const char* name : {"q_a_proj.bias", "q_b_proj.bias", "kv_a_proj_with_mqa.bias",
                           "kv_b_proj.bias", "o_proj.bias"}) {
    EXPECT_NE(params.find(name), nullptr) << name;
  }
  EXPECT_EQ(params.find("kv_b_proj.bias")->sizes(), torch::IntArrayRef({4 * 18}));
  MultiHeadLatentAttention direct(
      MultiHeadLatentAttentionOptions(48, 4).kv_lora_rank(16).bias(true));
  EXPECT_NE(direct->named_parameters().find("q_proj.bias"), nullptr);
  std::ostringstream s;
  biased->pretty_print(s);
  EXPECT_THAT(s.str(), HasSubstr(", dropout=0, bias=true, rope("));
}

TEST(MultiHeadLatentAttention, ParameterNamesFollowDeepSeek) {
  MultiHeadLatentAttention attn(small_options());
  std::map<std::string, std::vector<int64_t>> expected = {
      {"q_a_proj.weight", {24, 48}},     {"q_a_layernorm.weight", {24}},
      {"q_b_proj.weight", {4 * 14, 24}}, {"kv_a_proj_with_mqa.weight", {22, 48}},
      {"kv_a_layernorm.weight", {16}},   {"kv_b_proj.weight", {4 * 18, 16}},
      {"o_proj.weight", {48, 40}}};
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
  MultiHeadLatentAttention direct(MultiHeadLatentAttentionOptions(48, 4).kv_lora_rank(16));
  EXPECT_NE(direct->named_parameters().find("q_proj.weight"), nullptr);
  EXPECT_EQ(direct->named_parameters().find("q_a_proj.weight"), nullptr);
}

TEST(MultiHeadLatentAttention, CachesOnlyTheLatentAndTheRopeKey) {
  MultiHeadLatentAttention attn(small_options());
  DecodeState state = attn->init_state(1);
  torch::NoGradGuard no_grad;
  attn->forward(torch::randn({1, 9, 48}), state);
  EXPECT_EQ(state.bytes(), 9 * (16 + 6) * 4);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"latent", "rope_key"}));
}

TEST(MultiHeadLatentAttention, DefaultsFollowAttnhut) {
  MultiHeadLatentAttention attn(64, 4);  // hd 16
  EXPECT_EQ(attn->options.kv_lora_rank(), 16);
  EXPECT_EQ(attn->options.qk_nope_head_dim(), 8);
  EXPECT_EQ(attn->options.qk_rope_head_dim(), 8);
  EXPECT_EQ(attn->options.v_head_dim(), 16);
  EXPECT_TRUE(attn->options.causal());
}

TEST(MultiHeadLatentAttention, ErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(MultiHeadLatentAttention(small_options().qk_rope_head_dim(5)),
                       HasSubstr("MultiHeadLatentAttention"),
                       HasSubstr("rope dim must be even, got 5"));
  ATTNKIT_EXPECT_ERROR(MultiHeadLatentAttention(MultiHeadLatentAttentionOptions(30, 4)),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(MultiHeadLatentAttention(small_options().q_lora_rank(0)),
                       HasSubstr("q_lora_rank"));
  ATTNKIT_EXPECT_ERROR(MultiHeadLatentAttention(small_options().rope(RopeOptions().dim(4))),
                       HasSubstr("rope.dim (4) must be 0 or qk_rope_head_dim (6)"));
}

}  // namespace
}  // namespace attnkit
