#include <attnkit/attention/attention.h>
#include <attnkit/attention/grouped_query_attention.h>
#include <attnkit/attention/multi_head_latent_attention.h>
#include <attnkit/attention/standard_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"

namespace attnkit {
namespace {

using ::testing::HasSubstr;

// A mechanism that implements only the required part of the base class.
class MinimalImpl : public AttentionImpl {
 public:
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x) override { return x * 2; }
  std::string mechanism() const override { return "Minimal"; }
  int64_t dim() const override { return 4; }

 protected:
  std::shared_ptr<AttentionImpl> construct_like() const override {
    return std::make_shared<MinimalImpl>();
  }
};
ATTNKIT_ATTENTION_MODULE(Minimal);

TEST(Attention, BaseDefaultsRaiseNamingTheMechanism) {
  Attention m = as_attention(Minimal());
  torch::Tensor x = torch::ones({1, 2, 4});
  EXPECT_TRUE(torch::equal(m(x), x * 2));
  EXPECT_FALSE(m->supports_decoding());
  ATTNKIT_EXPECT_ERROR(m->init_state(1), HasSubstr("Minimal"), HasSubstr("decoding"));
  DecodeState state;
  ATTNKIT_EXPECT_ERROR(m(x, state), HasSubstr("Minimal"), HasSubstr("decoding"));
  ATTNKIT_EXPECT_ERROR(m(x, torch::ones({2, 2}, torch::kBool)), HasSubstr("Minimal"),
                       HasSubstr("attn_mask"));
  EXPECT_TRUE(torch::equal(m(x, torch::Tensor()), x * 2)) << "an undefined mask means none";
  AttentionOutput aux = m->forward_with_aux(x);
  EXPECT_TRUE(torch::equal(aux.output, x * 2));
  EXPECT_FALSE(aux.attn_weights.defined());
}

TEST(Attention, AsAttentionSharesTheModule) {
  GroupedQueryAttention gqa(GroupedQueryAttentionOptions(16, 4, 2).causal(true));
  Attention any = as_attention(gqa);
  EXPECT_EQ(any.ptr().get(), static_cast<AttentionImpl*>(gqa.ptr().get()));
  EXPECT_EQ(any->mechanism(), "GroupedQueryAttention");
  EXPECT_EQ(any->dim(), 16);
  torch::Tensor x = torch::randn({1, 3, 16});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(any(x), gqa(x)));
  // a state made through one holder works through the other: same module
  DecodeState state = any->init_state(1);
  EXPECT_EQ(gqa(x, state).sizes(), x.sizes());
  EXPECT_EQ(state.length(), 3);
}

TEST(Attention, HoldersRegisterAsSubmodules) {
  // A user's block holding any mechanism: parameters are reachable and named under the block.
  struct BlockImpl : torch::nn::Module {
    explicit BlockImpl(Attention a) : attn(register_module("attn", a.ptr())) {}
    std::shared_ptr<AttentionImpl> attn;
  };
  BlockImpl block(as_attention(MultiHeadLatentAttention(32, 4)));
  auto params = block.named_parameters();
  EXPECT_NE(params.find("attn.kv_a_proj_with_mqa.weight"), nullptr);
  EXPECT_NE(params.find("attn.o_proj.weight"), nullptr);
}

// A user's torch::nn::Cloneable block holding a mechanism: its clone() deep-copies the mechanism
// through AttentionImpl::clone_, so the copy computes the same function with its own weights.
struct CloneableBlockImpl : torch::nn::Cloneable<CloneableBlockImpl> {
  CloneableBlockImpl() { reset(); }
  void reset() override {
    attn = register_module("attn", GroupedQueryAttention(GroupedQueryAttentionOptions(16, 4, 2)));
  }
  GroupedQueryAttention attn{nullptr};
};

TEST(Attention, CloneableParentsDeepCopyTheirMechanisms) {
  torch::manual_seed(0);
  auto block = std::make_shared<CloneableBlockImpl>();
  block->eval();
  auto copy = std::dynamic_pointer_cast<CloneableBlockImpl>(block->clone());
  ASSERT_TRUE(copy);
  EXPECT_FALSE(copy->attn->is_training());
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({1, 3, 16});
  EXPECT_TRUE(torch::equal(copy->attn->forward(x), block->attn->forward(x)));
  EXPECT_NE(copy->attn->q_proj->weight.data_ptr(), block->attn->q_proj->weight.data_ptr());
  copy->attn->q_proj->weight.add_(1.0);
  EXPECT_FALSE(torch::equal(copy->attn->forward(x), block->attn->forward(x)));
  block->to(torch::kDouble);
  auto doubled = std::dynamic_pointer_cast<CloneableBlockImpl>(block->clone());
  EXPECT_EQ(doubled->attn->q_proj->weight.scalar_type(), torch::kDouble);
}

TEST(Attention, ModulesMoveWithTo) {
  StandardAttention attn(StandardAttentionOptions(16, 2).causal(true));
  attn->to(torch::kDouble);
  for (const auto& p : attn->parameters()) EXPECT_EQ(p.scalar_type(), torch::kDouble);
  DecodeState state = attn->init_state(1);
  torch::NoGradGuard no_grad;
  EXPECT_EQ(attn(torch::randn({1, 2, 16}, torch::kDouble), state).scalar_type(), torch::kDouble);
}

}  // namespace
}  // namespace attnkit
