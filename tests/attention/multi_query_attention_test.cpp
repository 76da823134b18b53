#include <attnkit/attention/grouped_query_attention.h>
#include <attnkit/attention/multi_query_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(MultiQueryAttention,
                       ContractCase{"causal",
                                    [] {
                                      return as_attention(MultiQueryAttention(
                                          MultiQueryAttentionOptions(32, 4).causal(true)));
                                    },
                                    true},
                       ContractCase{"non_causal",
                                    [] {
                                      return as_attention(MultiQueryAttention(
                                          MultiQueryAttentionOptions(32, 8).bias(true)));
                                    },
                                    false});

TEST(MultiQueryAttention, EqualsGroupedQueryWithOneKvHead) {
  torch::manual_seed(0);
  MultiQueryAttention mqa(MultiQueryAttentionOptions(32, 4).causal(true).bias(true));
  GroupedQueryAttention gqa(GroupedQueryAttentionOptions(32, 4, 1).causal(true).bias(true));
  testing::copy_parameters(*mqa, *gqa);
  torch::Tensor x = torch::randn({2, 9, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(testing::close(mqa(x), gqa(x)));
}

TEST(MultiQueryAttention, SharesOneKvHead) {
  MultiQueryAttention mqa(32, 4);
  EXPECT_EQ(mqa->k_proj->weight.sizes(), torch::IntArrayRef({8, 32}));
  EXPECT_EQ(mqa->v_proj->weight.sizes(), torch::IntArrayRef({8, 32}));
  MultiQueryAttention causal(MultiQueryAttentionOptions(32, 4).causal(true));
  DecodeState state = causal->init_state(1);
  torch::NoGradGuard no_grad;
  causal->forward(torch::randn({1, 5, 32}), state);
  EXPECT_EQ(state.bytes(), 5 * 2 * 8 * 4);  // k and v, one head of 8 floats per token
}

TEST(MultiQueryAttention, ErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(
      MultiQueryAttention(MultiQueryAttentionOptions(30, 4)),
      HasSubstr("MultiQueryAttention: dim (30) must be divisible by num_heads (4)"));
}

}  // namespace
}  // namespace attnkit
