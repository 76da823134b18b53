// Tests for include/attnkit/core/decode_state.h: growth, views, byte counts and ownership checks.

#include <attnkit/core/decode_state.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

namespace {

using attnkit::DecodeState;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

class DecodeStateTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
  const int owner_ = 0;  // any address identifies an owner
  const int other_owner_ = 0;
};

TEST_F(DecodeStateTest, FreshState) {
  DecodeState empty;
  EXPECT_FALSE(empty.initialized());
  DecodeState state(&owner_, "MyAttention", 3);
  EXPECT_TRUE(state.initialized());
  EXPECT_EQ(state.length(), 0);
  EXPECT_EQ(state.batch_size(), 3);
  EXPECT_EQ(state.mechanism(), "MyAttention");
  EXPECT_EQ(state.bytes(), 0);
  EXPECT_TRUE(state.names().empty());
}

TEST_F(DecodeStateTest, AppendReturnsPrefixViewAndGetReturnsValidPart) {
  DecodeState state(&owner_, "MyAttention", 2);
  torch::Tensor prompt = torch::randn({2, 3, 5, 4});  // [B, H, L, D], grows along dim 2
  torch::Tensor view = state.append("k", prompt, 2);
  EXPECT_EQ(view.sizes(), torch::IntArrayRef({2, 3, 5, 4}));
  EXPECT_TRUE(torch::equal(view, prompt));
  // Before advance() the state still holds zero tokens.
  EXPECT_EQ(state.get("k").size(2), 0);
  state.advance(5);
  EXPECT_EQ(state.length(), 5);
  EXPECT_TRUE(torch::equal(state.get("k"), prompt));

  torch::Tensor token = torch::randn({2, 3, 1, 4});
  view = state.append("k", token, 2);
  EXPECT_EQ(view.sizes(), torch::IntArrayRef({2, 3, 6, 4}));
  EXPECT_TRUE(torch::equal(view, torch::cat({prompt, token}, 2)));
  state.advance(1);
  EXPECT_TRUE(torch::equal(state.get("k"), torch::cat({prompt, token}, 2)));
}

TEST_F(DecodeStateTest, ValuesSurviveManyGrowths) {
  DecodeState state(&owner_, "MyAttention", 2);
  std::vector<torch::Tensor> keys = {torch::randn({2, 2, 3, 4})};
  std::vector<torch::Tensor> values = {torch::randn({2, 3, 3, 5})};  // grows along dim 2 too
  std::vector<torch::Tensor> latents = {torch::randn({2, 3, 6})};    // [B, L, C], grows along 1
  state.append("k", keys[0], 2);
  state.append("v", values[0], 2);
  state.append("latent", latents[0], -2);
  state.advance(3);
  // 70 single tokens cross capacities 16, 32, 64 and 128.
  for (int step = 0; step < 70; ++step) {
    keys.push_back(torch::randn({2, 2, 1, 4}));
    values.push_back(torch::randn({2, 3, 1, 5}));
    latents.push_back(torch::randn({2, 1, 6}));
    torch::Tensor k_view = state.append("k", keys.back(), 2);
    torch::Tensor v_view = state.append("v", values.back(), 2);
    torch::Tensor l_view = state.append("latent", latents.back(), -2);
    state.advance(1);
    ASSERT_TRUE(torch::equal(k_view, torch::cat(keys, 2))) << "step " << step;
    ASSERT_TRUE(torch::equal(v_view, torch::cat(values, 2))) << "step " << step;
    ASSERT_TRUE(torch::equal(l_view, torch::cat(latents, 1))) << "step " << step;
  }
  EXPECT_EQ(state.length(), 73);
  EXPECT_TRUE(torch::equal(state.get("k"), torch::cat(keys, 2)));
  EXPECT_TRUE(torch::equal(state.get("v"), torch::cat(values, 2)));
  EXPECT_TRUE(torch::equal(state.get("latent"), torch::cat(latents, 1)));
  EXPECT_EQ(state.names(), std::vector<std::string>({"k", "latent", "v"}));
}

TEST_F(DecodeStateTest, ChunksOfMixedSizes) {
  DecodeState state(&owner_, "MyAttention", 1);
  std::vector<torch::Tensor> chunks;
  for (int64_t n : {1, 20, 3, 40, 1, 100}) {
    chunks.push_back(torch::randn({1, 2, n, 3}));
    torch::Tensor view = state.append("k", chunks.back(), 2);
    state.advance(n);
    ASSERT_TRUE(torch::equal(view, torch::cat(chunks, 2))) << "after chunk of " << n;
  }
  EXPECT_EQ(state.length(), 165);
}

TEST_F(DecodeStateTest, CacheHoldsDataNotGraph) {
  DecodeState state(&owner_, "MyAttention", 1);
  torch::Tensor chunk = torch::randn({1, 1, 2, 3}, torch::requires_grad());
  torch::Tensor view = state.append("k", chunk * 2, 2);
  EXPECT_FALSE(view.requires_grad());
  EXPECT_TRUE(torch::equal(view, (chunk * 2).detach()));
}

TEST_F(DecodeStateTest, BytesCountTheValidPart) {
  const int64_t B = 2, H = 3, D = 4;
  DecodeState state(&owner_, "MyAttention", B);
  int64_t L = 0;
  for (int64_t n : {5, 1, 1, 20}) {
    state.append("k", torch::randn({B, H, n, D}), 2);
    state.append("v", torch::randn({B, H, n, D}), 2);
    state.advance(n);
    L += n;
    // Two float32 caches of [B, H, L, D], whatever their capacity.
    EXPECT_EQ(state.bytes(), 2 * B * H * L * D * 4) << "L = " << L;
  }
  // A `set` tensor counts whole; a double cache counts 8 bytes per element.
  state.set("recurrent", torch::zeros({B, H, D, D}));
  EXPECT_EQ(state.bytes(), 2 * B * H * L * D * 4 + B * H * D * D * 4);
  EXPECT_TRUE(torch::equal(state.get("recurrent"), torch::zeros({B, H, D, D})));
  DecodeState wide(&owner_, "MyAttention", 1);
  wide.append("c", torch::randn({1, 7, 3}, torch::kDouble), 1);
  wide.advance(7);
  EXPECT_EQ(wide.bytes(), 7 * 3 * 8);
}

TEST_F(DecodeStateTest, CheckRejectsAnotherOwnerOrBatchSize) {
  DecodeState state(&owner_, "MyAttention", 2);
  EXPECT_NO_THROW(state.check(&owner_, "MyAttention", 2));
  EXPECT_THAT([&] { state.check(&other_owner_, "OtherAttention", 2); },
              ThrowsMessage<c10::Error>(AllOf(HasSubstr("OtherAttention"),
                                              HasSubstr("belongs to another module"),
                                              HasSubstr("MyAttention"))));
  EXPECT_THAT([&] { state.check(&owner_, "MyAttention", 3); },
              ThrowsMessage<c10::Error>(AllOf(HasSubstr("MyAttention"), HasSubstr("batch size 2"),
                                              HasSubstr("batch size 3"))));
  DecodeState empty;
  EXPECT_THAT([&] { empty.check(&owner_, "MyAttention", 2); },
              ThrowsMessage<c10::Error>(AllOf(HasSubstr("MyAttention"), HasSubstr("empty"))));
  EXPECT_THAT([&] { DecodeState(&owner_, "MyAttention", 0); },
              ThrowsMessage<c10::Error>(HasSubstr("batch_size")));
}

TEST_F(DecodeStateTest, MisuseErrors) {
  DecodeState state(&owner_, "MyAttention", 1);
  EXPECT_THAT([&] { state.get("k"); }, ThrowsMessage<c10::Error>(AllOf(HasSubstr("MyAttention"),
                                                                       HasSubstr("no entry 'k'"))));
  EXPECT_FALSE(state.contains("k"));
  state.append("k", torch::randn({1, 2, 3}), 1);
  EXPECT_TRUE(state.contains("k"));
  EXPECT_THAT(
      [&] {
        state.append("k", torch::randn({1, 2, 3}), 2);
      },
      ThrowsMessage<c10::Error>(AllOf(HasSubstr("'k'"), HasSubstr("dim"))));
  EXPECT_THAT(
      [&] {
        state.append("k", torch::randn({1, 2, 3}, torch::kDouble), 1);
      },
      ThrowsMessage<c10::Error>(AllOf(HasSubstr("'k'"), HasSubstr("Double"))));
  EXPECT_THAT([&] { state.advance(-1); }, ThrowsMessage<c10::Error>(HasSubstr("advance")));
}

}  // namespace
