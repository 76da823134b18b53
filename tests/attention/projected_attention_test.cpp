#include <attnkit/attention/multi_query_attention.h>
#include <attnkit/attention/projected_attention.h>
#include <attnkit/attention/standard_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"

namespace attnkit {
namespace {

TEST(ProjectedAttention, KvHeadsDependOnTheMechanism) {
  StandardAttention standard(StandardAttentionOptions(32, 4));
  MultiQueryAttention mqa(MultiQueryAttentionOptions(32, 4));
  EXPECT_EQ(standard->num_kv_heads(), 4);
  EXPECT_EQ(mqa->num_kv_heads(), 1);
  EXPECT_EQ(standard->k_proj->weight.sizes(), torch::IntArrayRef({32, 32}));
  EXPECT_EQ(mqa->k_proj->weight.sizes(), torch::IntArrayRef({8, 32}));
}

TEST(ProjectedAttention, PrettyPrintNamesTheMechanism) {
  std::ostringstream s;
  MultiQueryAttention(MultiQueryAttentionOptions(32, 4).dropout(0.1).bias(true))->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::MultiQueryAttention(dim=32, num_heads=4, causal=false, dropout=0.1, "
            "temperature=1, bias=true, rope=none)");
}

TEST(ProjectedAttention, ResetParametersReinitialises) {
  torch::manual_seed(0);
  MultiQueryAttention mqa(MultiQueryAttentionOptions(32, 4));
  torch::Tensor before = mqa->q_proj->weight.clone();
  mqa->reset_parameters();
  EXPECT_FALSE(torch::equal(before, mqa->q_proj->weight));
  EXPECT_EQ(mqa->parameters().size(), 4u);
}

TEST(ProjectedAttention, CloneKeepsTheMechanism) {
  MultiQueryAttention mqa(MultiQueryAttentionOptions(32, 4).causal(true));
  auto copy = std::dynamic_pointer_cast<MultiQueryAttentionImpl>(mqa->clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(copy->num_kv_heads(), 1);
  EXPECT_TRUE(copy->supports_decoding());
  EXPECT_NE(copy->q_proj.get(), mqa->q_proj.get());
  EXPECT_TRUE(torch::equal(copy->q_proj->weight, mqa->q_proj->weight));
}

}  // namespace
}  // namespace attnkit
