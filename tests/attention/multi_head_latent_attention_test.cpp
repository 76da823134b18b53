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
                 false});

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
