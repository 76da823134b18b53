#include <attnkit/attention/big_bird_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>
#include <set>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

BigBirdAttentionOptions sparse_options() {
  // 16 tokens in 8 blocks of 2: global 0, window of 3, one random block per row.
  return BigBirdAttentionOptions(32, 4)
      .block_size(2)
      .num_window_blocks(3)
      .num_random_blocks(1)
      .num_global_blocks(1);
}

ATTNKIT_CONTRACT_SUITE(
    BigBirdAttention,
    ContractCase{"non_causal", [] { return as_attention(BigBirdAttention(sparse_options())); },
                 false, true, 2, 16},
    ContractCase{"causal",
                 [] { return as_attention(BigBirdAttention(sparse_options().causal(true))); }, true,
                 true, 2, 16},
    ContractCase{"causal_two_globals_bias",
                 [] {
                   return as_attention(BigBirdAttention(sparse_options()
                                                            .block_size(3)
                                                            .num_global_blocks(2)
                                                            .num_random_blocks(2)
                                                            .causal(true)
                                                            .bias(true)
                                                            .seed(11)));
                 },
                 true, true, 2, 19},
    ContractCase{"defaults", [] { return as_attention(BigBirdAttention(16, 2)); }, false});

// The block pattern of docs/catalog.md, "BigBird attention", written from the docs with sets.
torch::Tensor naive_block_mask(
    int64_t nb, int64_t window, int64_t random, int64_t globals, bool causal, uint64_t seed) {
  torch::Tensor m = torch::zeros({nb, nb}, torch::kBool);
  const int64_t half = window / 2;
  std::set<int64_t> glob;
  for (int64_t g = 0; g < std::min(globals, nb); ++g) glob.insert(g);
  for (int64_t g : glob) {
    m[g].fill_(true);
    m.select(1, g).fill_(true);
  }
  for (int64_t j = 0; j < nb; ++j) {
    for (int64_t o = -half; o <= (causal ? 0 : half); ++o) {
      if (j + o >= 0 && j + o < nb) m[j][j + o] = true;
    }
  }
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (int64_t j = 0; j < nb; ++j) {
    if (glob.count(j)) continue;
    std::set<int64_t> taken = glob;
    for (int64_t o = -half; o <= half; ++o) taken.insert(j + o);
    std::vector<int64_t> cand;
    for (int64_t k = 0; k < nb; ++k) {
      if (!taken.count(k) && (!causal || k < j - half)) cand.push_back(k);
    }
    if (cand.empty()) continue;
    torch::Tensor pick = torch::randperm(static_cast<int64_t>(cand.size()), gen, torch::kLong);
    for (int64_t i = 0; i < std::min<int64_t>(random, pick.size(0)); ++i) {
      m[j][cand[pick[i].item<int64_t>()]] = true;
    }
  }
  return m;
}

// Masked softmax attention by loops over tokens, on the module's weights (double).
torch::Tensor naive_big_bird(BigBirdAttention& attn,
                             const torch::Tensor& x,
                             const torch::Tensor& key_padding = {}) {
  torch::NoGradGuard no_grad;
  const auto& o = attn->options;
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), H = o.num_heads(), hd = D / H;
  const int64_t bs = o.block_size(), nb = (T + bs - 1) / bs;
  torch::Tensor blocks = naive_block_mask(nb, o.num_window_blocks(), o.num_random_blocks(),
                                          o.num_global_blocks(), o.causal(), o.seed());
  auto lin = [](const torch::Tensor& in, const torch::nn::Linear& l) {
    torch::Tensor y = in.matmul(l->weight.to(torch::kDouble).t());
    return l->bias.defined() ? y + l->bias.to(torch::kDouble) : y;
  };
  torch::Tensor xd = x.to(torch::kDouble);
  torch::Tensor q = lin(xd, attn->q_proj), k = lin(xd, attn->k_proj), v = lin(xd, attn->v_proj);
  torch::Tensor merged = torch::zeros({B, T, D}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> logit(T, -std::numeric_limits<double>::infinity());
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < T; ++j) {
          bool keep = blocks[i / bs][j / bs].item<bool>();
          if (o.causal() && j > i) keep = false;
          if (key_padding.defined() && !key_padding[b][j].item<bool>()) keep = false;
          if (!keep) continue;
          logit[j] =
              (q[b][i].narrow(0, h * hd, hd) * k[b][j].narrow(0, h * hd, hd)).sum().item<double>() /
              std::sqrt(static_cast<double>(hd));
          m = std::max(m, logit[j]);
        }
        if (m == -std::numeric_limits<double>::infinity()) continue;  // sees nothing: zeros
        double denom = 0;
        for (int64_t j = 0; j < T; ++j) denom += std::exp(logit[j] - m);
        for (int64_t j = 0; j < T; ++j) {
          merged[b][i].narrow(0, h * hd, hd) +=
              std::exp(logit[j] - m) / denom * v[b][j].narrow(0, h * hd, hd);
        }
      }
    }
  }
  return lin(merged, attn->o_proj);
}

TEST(BigBirdAttention, BlockMaskMatchesNaive) {
  for (bool causal : {false, true}) {
    for (int64_t seed : {0, 5}) {
      BigBirdAttention attn(sparse_options()
                                .num_window_blocks(3)
                                .num_random_blocks(2)
                                .num_global_blocks(2)
                                .causal(causal)
                                .seed(seed));
      for (int64_t nb : {1, 2, 7, 12}) {
        EXPECT_TRUE(torch::equal(attn->block_mask(nb), naive_block_mask(nb, 3, 2, 2, causal, seed)))
            << "causal " << causal << " seed " << seed << " nb " << nb;
      }
    }
  }
}

TEST(BigBirdAttention, MatchesNaiveReimplementation) {
  for (bool causal : {false, true}) {
    torch::manual_seed(0);
    BigBirdAttention attn(sparse_options().causal(causal).bias(true).seed(3));
    torch::Tensor x = torch::randn({2, 15, 32});  // 8 blocks, the last one partial
    EXPECT_LT(max_abs_diff(attn(x), naive_big_bird(attn, x)), 1e-5) << "causal " << causal;
  }
}

TEST(BigBirdAttention, KeyPaddingMask) {
  torch::manual_seed(1);
  BigBirdAttention attn(sparse_options());
  torch::Tensor x = torch::randn({2, 14, 32});
  torch::Tensor real = torch::ones({2, 14}, torch::kBool);
  real[1].narrow(0, 9, 5).fill_(false);  // sample 1 has 9 real tokens
  torch::Tensor y = attn->forward_padded(x, real);
  EXPECT_LT(max_abs_diff(y, naive_big_bird(attn, x, real)), 1e-5);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(testing::close(y[0], attn(x)[0]));  // nothing padded in sample 0
  EXPECT_GT(max_abs_diff(y[1], attn(x)[1]), 1e-4);
  // the same as a [B, T, T] keep mask through forward(x, attn_mask)
  EXPECT_TRUE(testing::close(attn(x, real.unsqueeze(1).expand({2, 14, 14})), y));
  // a sample with no real token gives zeros before o_proj (no bias): zeros, not NaN
  torch::Tensor none = real.clone();
  none[1].fill_(false);
  torch::Tensor z = attn->forward_padded(x, none);
  EXPECT_TRUE(torch::isfinite(z).all().item<bool>());
  EXPECT_EQ(z[1].abs().max().item<float>(), 0.0f);
}

// attnhut test_bigbird::test_shape_with_padding
TEST(BigBirdAttention, UpstreamShapeWithPadding) {
  torch::manual_seed(0);
  BigBirdAttention attn(BigBirdAttentionOptions(32, 4).block_size(8).num_global_blocks(1));
  torch::Tensor x = torch::randn({2, 20, 32});
  torch::Tensor y = attn(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

// attnhut test_bigbird::test_mask_invariants
TEST(BigBirdAttention, UpstreamMaskInvariants) {
  BigBirdAttention attn(BigBirdAttentionOptions(32, 4)
                            .block_size(4)
                            .num_window_blocks(3)
                            .num_random_blocks(1)
                            .num_global_blocks(1));
  torch::Tensor mask = attn->block_mask(8);
  ASSERT_EQ(mask.sizes(), torch::IntArrayRef({8, 8}));
  EXPECT_TRUE(mask[0].all().item<bool>());
  EXPECT_TRUE(mask.select(1, 0).all().item<bool>());
  EXPECT_TRUE(mask.diagonal().all().item<bool>());
  for (int64_t j = 1; j < 8; ++j) {
    EXPECT_TRUE(mask[j][j - 1].item<bool>() && mask[j - 1][j].item<bool>()) << j;
  }
}

// attnhut test_bigbird::test_random_block_count
TEST(BigBirdAttention, UpstreamRandomBlockCount) {
  BigBirdAttention attn(BigBirdAttentionOptions(32, 4)
                            .block_size(4)
                            .num_window_blocks(3)
                            .num_random_blocks(2)
                            .num_global_blocks(1));
  torch::Tensor mask = attn->block_mask(12);
  const int64_t j = 6;
  int64_t extra = 0;
  for (int64_t k = 0; k < 12; ++k) {
    if (mask[j][k].item<bool>() && std::abs(k - j) > 1 && k != 0) ++extra;
  }
  EXPECT_EQ(extra, 2);
}

// attnhut test_bigbird::test_causal (conftest.assert_causal)
TEST(BigBirdAttention, UpstreamCausal) {
  torch::manual_seed(0);
  BigBirdAttention attn(
      BigBirdAttentionOptions(32, 4).block_size(4).num_global_blocks(1).causal(true));
  attn->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({1, 16, 32});
  torch::Tensor x2 = x.clone();
  x2.select(1, 15).add_(5.0);
  torch::Tensor y = attn(x), y2 = attn(x2);
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 15), y2.narrow(1, 0, 15), 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(y.narrow(1, 15, 1), y2.narrow(1, 15, 1), 1e-4, 1e-4));
}

TEST(BigBirdAttention, RandomBlocksAreSeeded) {
  BigBirdAttention a(sparse_options().num_random_blocks(2).seed(0));
  BigBirdAttention b(sparse_options().num_random_blocks(2).seed(1));
  EXPECT_TRUE(torch::equal(a->block_mask(12), a->block_mask(12)));  // same every call
  EXPECT_FALSE(torch::equal(a->block_mask(12), b->block_mask(12)));
  torch::manual_seed(2);
  torch::Tensor x = torch::randn({1, 24, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(a(x), a(x)));
  // the global RNG is neither used nor disturbed
  torch::manual_seed(3);
  torch::Tensor expected = torch::rand({4});
  torch::manual_seed(3);
  a->block_mask(12);
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected));
}

TEST(BigBirdAttention, CausalBlockRowsDoNotDependOnLength) {
  BigBirdAttention attn(sparse_options().num_random_blocks(2).causal(true));
  torch::Tensor big = attn->block_mask(12);
  EXPECT_TRUE(torch::equal(big.narrow(0, 0, 8).narrow(1, 0, 8), attn->block_mask(8)));
  // non-global rows never list a future block (global row 0 lists every block)
  EXPECT_FALSE(big.narrow(0, 1, 7).narrow(1, 8, 4).any().item<bool>());
  EXPECT_TRUE(big[0].all().item<bool>());
}

TEST(BigBirdAttention, CachesKeysAndValues) {
  BigBirdAttention attn(sparse_options().causal(true));
  DecodeState state = attn->init_state(1);
  torch::NoGradGuard no_grad;
  attn(torch::randn({1, 7, 32}), state);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"k", "v"}));
  EXPECT_EQ(state.bytes(), 2 * 7 * 32 * 4);
  BigBirdAttention bidirectional(sparse_options());
  EXPECT_FALSE(bidirectional->supports_decoding());
  ATTNKIT_EXPECT_ERROR(bidirectional->init_state(1), HasSubstr("BigBirdAttention"),
                       HasSubstr("causal"));
}

TEST(BigBirdAttention, ParametersAndPrint) {
  BigBirdAttention attn(16, 2);
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), 4u);
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) {
    ASSERT_NE(params.find(name), nullptr) << name;
    EXPECT_EQ(params.find(name)->sizes(), torch::IntArrayRef({16, 16}));
  }
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::BigBirdAttention(dim=16, num_heads=2, block_size=64, num_window_blocks=3, "
            "num_random_blocks=3, num_global_blocks=2, causal=false, seed=0, bias=false)");
}

// Every argument with invalid values (causal, seed and bias have none).
TEST(BigBirdAttention, ErrorsNameTheArgument) {
  auto opts = [] { return BigBirdAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(30, 4), HasSubstr("BigBirdAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(0, 4), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(32, 0), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(opts().block_size(0)),
                       HasSubstr("block_size must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(opts().num_window_blocks(4)),
                       HasSubstr("num_window_blocks must be a positive odd number, got 4"));
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(opts().num_window_blocks(-1)),
                       HasSubstr("num_window_blocks must be a positive odd number, got -1"));
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(opts().num_random_blocks(-1)),
                       HasSubstr("num_random_blocks must be >= 0, got -1"));
  ATTNKIT_EXPECT_ERROR(BigBirdAttention(opts().num_global_blocks(-2)),
                       HasSubstr("num_global_blocks must be >= 0, got -2"));
  BigBirdAttention attn(opts().block_size(4));
  ATTNKIT_EXPECT_ERROR(attn->block_mask(0), HasSubstr("num_blocks must be positive, got 0"));
  torch::Tensor x = torch::randn({2, 5, 32});
  ATTNKIT_EXPECT_ERROR(attn->forward_padded(x, torch::ones({2, 4}, torch::kBool)),
                       HasSubstr("key_padding_mask of shape [B, T] = [2, 5]"));
  ATTNKIT_EXPECT_ERROR(attn->forward_padded(x, torch::ones({2, 5})),
                       HasSubstr("key_padding_mask of dtype bool"));
}

}  // namespace
}  // namespace attnkit
