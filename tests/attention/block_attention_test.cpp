#include <attnkit/attention/block_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"
#include "support/naive.h"
#include "support/zoo_naive.h"

#include <cmath>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    BlockAttention,
    ContractCase{
        "blocks",
        [] { return as_attention(BlockAttention(BlockAttentionOptions(32, 4).block_size(4))); },
        false},
    ContractCase{"overlap",
                 [] {
                   return as_attention(
                       BlockAttention(BlockAttentionOptions(32, 4).block_size(4).overlap(true)));
                 },
                 false},
    ContractCase{"overlap_odd_bias",
                 [] {
                   return as_attention(BlockAttention(
                       BlockAttentionOptions(24, 3).block_size(5).overlap(true).bias(true)));
                 },
                 false, true, 2, 13},
    ContractCase{
        "overlap_rope",
        [] {
          return as_attention(BlockAttention(
              BlockAttentionOptions(32, 4).block_size(4).overlap(true).rope(RopeOptions())));
        },
        false},
    ContractCase{"defaults", [] { return as_attention(BlockAttention(16, 2)); }, false});

// docs/catalog.md, "Block attention", with its overlap rule, written per block: list the blocks
// (start every s tokens while the previous block ends before T), run the naive attention inside
// each, and average every token's per-head output and weight row over its covering blocks.
testing::NaiveZooResult naive_block(BlockAttention& attn, const torch::Tensor& x) {
  const auto& o = attn->options;
  const int64_t B = x.size(0), T = x.size(1), H = o.num_heads(), bs = o.block_size();
  const int64_t s = o.overlap() ? bs / 2 : bs;
  std::vector<int64_t> starts{0};
  while (starts.back() + bs < T) starts.push_back(starts.back() + s);
  const double scale = 1.0 / (std::sqrt(double(o.dim() / H)) * o.temperature());
  torch::Tensor heads = torch::zeros({B, H, T, o.dim() / H}, torch::kDouble);
  torch::Tensor weights = torch::zeros({B, H, T, T}, torch::kDouble);
  torch::Tensor count = torch::zeros({T}, torch::kDouble);
  for (int64_t begin : starts) {
    const int64_t end = std::min(begin + bs, T);
    auto in = [&](int64_t t) { return t >= begin && t < end; };
    auto r = testing::naive_zoo_attention(
        attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, H, scale, x,
        [&](int64_t, int64_t, int64_t i, int64_t j) { return in(i) && in(j); });
    heads += r.heads;  // rows outside the block are zero
    weights += r.weights;
    count.narrow(0, begin, end - begin) += 1;
  }
  testing::NaiveZooResult out;
  out.heads = heads / count.view({1, 1, T, 1});
  out.weights = weights / count.view({1, 1, T, 1});
  out.output =
      testing::naive_linear(out.heads.transpose(1, 2).reshape({B, T, o.dim()}), attn->o_proj);
  return out;
}

TEST(BlockAttention, MatchesNaiveReimplementation) {
  for (bool overlap : {false, true}) {
    for (int64_t bs : {2, 3, 4, 5, 16}) {
      torch::manual_seed(0);
      BlockAttention attn(
          BlockAttentionOptions(32, 4).block_size(bs).overlap(overlap).bias(true).temperature(0.8));
      torch::Tensor x = torch::randn({2, 11, 32});
      AttentionOutput out = attn->forward_with_aux(x);
      auto expected = naive_block(attn, x);
      EXPECT_LT(max_abs_diff(out.output, expected.output), 1e-5) << overlap << " bs " << bs;
      EXPECT_TRUE(testing::close(out.attn_weights, expected.weights)) << overlap << " bs " << bs;
    }
  }
}

// attzoo test_masks (create_block_mask): block-diagonal with a partial last block; and
// the overlap phases for block 4 / stride 2.
TEST(BlockAttention, ExactBlockPatterns) {
  BlockAttention plain(BlockAttentionOptions(8, 1).block_size(3));
  EXPECT_TRUE(torch::equal(plain->block_starts(8), torch::tensor({0, 3, 6}, torch::kLong)));
  torch::Tensor m = plain->keep_masks(8);
  ASSERT_EQ(m.sizes(), torch::IntArrayRef({1, 8, 8}));
  for (int64_t i = 0; i < 8; ++i) {
    for (int64_t j = 0; j < 8; ++j) EXPECT_EQ(m[0][i][j].item<bool>(), i / 3 == j / 3);
  }
  BlockAttention over(BlockAttentionOptions(8, 1).block_size(4).overlap(true));
  EXPECT_TRUE(torch::equal(over->block_starts(9), torch::tensor({0, 2, 4, 6}, torch::kLong)));
  torch::Tensor p = over->keep_masks(9);
  ASSERT_EQ(p.sizes(), torch::IntArrayRef({2, 9, 9}));
  auto block = [](int64_t i, int64_t j, int64_t begin, int64_t end) {
    return i >= begin && i < end && j >= begin && j < end;
  };
  for (int64_t i = 0; i < 9; ++i) {
    for (int64_t j = 0; j < 9; ++j) {
      EXPECT_EQ(p[0][i][j].item<bool>(), block(i, j, 0, 4) || block(i, j, 4, 8)) << i << j;
      EXPECT_EQ(p[1][i][j].item<bool>(), block(i, j, 2, 6) || block(i, j, 6, 9)) << i << j;
    }
  }
  // one block when the sequence fits
  EXPECT_EQ(over->block_starts(4).size(0), 1);
}

// Overlap is a proper blend: weight rows sum to 1, every weight lies in [0, 1], and a sequence
// that fits in one block is plain attention (attzoo: S <= block_size is plain MHA).
TEST(BlockAttention, OverlapIsAProperBlend) {
  torch::manual_seed(1);
  BlockAttention attn(BlockAttentionOptions(32, 4).block_size(4).overlap(true));
  torch::Tensor w = attn->forward_with_aux(torch::randn({2, 10, 32})).attn_weights;
  EXPECT_LT((w.sum(-1) - 1).abs().max().item<double>(), 1e-6);
  EXPECT_GE(w.min().item<double>(), 0.0);
  EXPECT_LE(w.max().item<double>(), 1.0);
  // token 1 lies only in block [0, 4): it sees nothing beyond key 3
  EXPECT_EQ(w.narrow(2, 1, 1).narrow(3, 4, 6).abs().max().item<double>(), 0.0);
  // token 3 lies in [0, 4) and [2, 6): it sees keys 0..5 and nothing else
  EXPECT_GT(w.narrow(2, 3, 1).narrow(3, 0, 6).min().item<double>(), 0.0);
  torch::Tensor short_x = torch::randn({1, 4, 32});
  auto full = testing::naive_zoo_attention(attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj,
                                           4, 1.0 / std::sqrt(8.0), short_x,
                                           [](int64_t, int64_t, int64_t, int64_t) { return true; });
  EXPECT_LT(max_abs_diff(attn(short_x), full.output), 1e-5);
}

TEST(BlockAttention, UserMasksCombine) {
  torch::manual_seed(2);
  BlockAttention attn(BlockAttentionOptions(32, 4).block_size(4).overlap(true));
  torch::Tensor x = torch::randn({1, 8, 32});
  // Hide every key of block [0, 4) from query 3: query 3 then
  // sees only keys 4, 5 through block [2, 6), and must not be halved by the empty block.
  torch::Tensor keep = torch::ones({8, 8}, torch::kBool);
  keep[3].narrow(0, 0, 4).fill_(false);
  torch::Tensor w;
  {
    torch::NoGradGuard no_grad;
    auto r = testing::naive_zoo_attention(
        attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, 4, 1.0 / std::sqrt(8.0), x,
        [](int64_t, int64_t, int64_t i, int64_t j) { return i == 3 && (j == 4 || j == 5); });
    torch::Tensor y = attn(x, keep);
    EXPECT_LT(max_abs_diff(y[0][3], r.output[0][3]), 1e-5);
  }
  torch::Tensor additive =
      torch::zeros({8, 8}).masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(testing::close(attn(x, additive), attn(x, keep)));
}

TEST(BlockAttention, ParametersAndPrint) {
  BlockAttention attn(16, 2);
  EXPECT_EQ(attn->named_parameters().size(), 4u);
  EXPECT_NE(attn->named_parameters().find("o_proj.weight"), nullptr);
  EXPECT_FALSE(attn->supports_decoding());
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::BlockAttention(dim=16, num_heads=2, block_size=64, overlap=false, "
            "temperature=1, dropout=0, bias=false, rope=none)");
}

TEST(BlockAttention, ErrorsNameTheArgument) {
  auto opts = [] { return BlockAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(BlockAttention(30, 4), HasSubstr("BlockAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(BlockAttention(0, 4), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(BlockAttention(32, -2), HasSubstr("num_heads must be positive, got -2"));
  ATTNKIT_EXPECT_ERROR(BlockAttention(opts().block_size(0)),
                       HasSubstr("block_size must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(BlockAttention(opts().block_size(1).overlap(true)),
                       HasSubstr("overlap(true) needs block_size >= 2"));
  ATTNKIT_EXPECT_ERROR(BlockAttention(opts().temperature(0)),
                       HasSubstr("temperature must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(BlockAttention(opts().dropout(2)),
                       HasSubstr("dropout must be in [0, 1), got 2"));
  ATTNKIT_EXPECT_ERROR(BlockAttention(opts())->keep_masks(0),
                       HasSubstr("seq_len must be positive, got 0"));
}

// attzoo's rope=True (interleaved pairs, theta 10000) against a naive RoPE on q and k.
TEST(BlockAttention, MatchesNaiveWithRope) {
  torch::manual_seed(7);
  BlockAttention attn(BlockAttentionOptions(32, 4).block_size(16).rope(
      RopeOptions().style(RopeStyle::kInterleaved)));
  torch::Tensor x = torch::randn({2, 10, 32});
  auto expected = testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, 4, 1.0 / std::sqrt(8.0), x,
      [](int64_t, int64_t, int64_t i, int64_t j) { return true; }, {},
      [](const torch::Tensor& t) { return testing::naive_rope_interleaved(t, 10000.0); });
  EXPECT_LT(max_abs_diff(attn(x), expected.output), 1e-5);
  BlockAttention plain(BlockAttentionOptions(32, 4).block_size(16));
  testing::copy_parameters(*attn, *plain);
  EXPECT_GT(max_abs_diff(plain(x), expected.output), 1e-3);  // the rotation matters
  ATTNKIT_EXPECT_ERROR(
      BlockAttention(BlockAttentionOptions(32, 4).block_size(16).rope(RopeOptions().dim(3))),
      HasSubstr("BlockAttention"), HasSubstr("rope dim must be even, got 3"));
}

}  // namespace
}  // namespace attnkit
