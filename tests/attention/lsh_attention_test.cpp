#include <attnkit/attention/lsh_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"
#include "support/naive.h"
#include "support/zoo_naive.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    LSHAttention,
    ContractCase{
        "one_round",
        [] { return as_attention(LSHAttention(LSHAttentionOptions(32, 4).bucket_size(4))); },
        false},
    ContractCase{"three_rounds_bias",
                 [] {
                   return as_attention(LSHAttention(
                       LSHAttentionOptions(24, 3).bucket_size(3).num_hashes(3).seed(9).bias(true)));
                 },
                 false, true, 2, 13},
    ContractCase{"defaults", [] { return as_attention(LSHAttention(16, 2)); }, false});

// docs/catalog.md, "LSH attention" (Reformer): draw the rotations from a generator seeded with
// `seed` in the documented order, hash every query in double, attend within the bucket per
// round, average over rounds.
struct NaiveLsh {
  testing::NaiveZooResult result;
  torch::Tensor buckets;  // [R, B, H, T]
};

NaiveLsh naive_lsh(LSHAttention& attn, const torch::Tensor& x, const torch::Tensor& keep = {}) {
  const auto& o = attn->options;
  const int64_t B = x.size(0), T = x.size(1), H = o.num_heads(), hd = o.dim() / H;
  const int64_t R = o.num_hashes();
  const int64_t nb = std::max<int64_t>(1, (T + o.bucket_size() - 1) / o.bucket_size());
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(o.seed()));
  torch::Tensor rot = torch::randn({R, H, hd, (nb + 1) / 2}, gen, torch::kFloat).to(torch::kDouble);
  torch::Tensor q = testing::naive_linear(x, attn->q_proj);  // [B, T, D]
  torch::Tensor buckets = torch::zeros({R, B, H, T}, torch::kLong);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t t = 0; t < T; ++t) {
          double best = -1e300;
          for (int64_t c = 0; c < nb; ++c) {
            const int64_t col = c % ((nb + 1) / 2);
            double s = 0;
            for (int64_t d = 0; d < hd; ++d)
              s += q[b][t][h * hd + d].item<double>() * rot[r][h][d][col].item<double>();
            if (c >= (nb + 1) / 2) s = -s;
            if (s > best) {
              best = s;
              buckets[r][b][h][t] = c;
            }
          }
        }
      }
    }
  }
  const double scale = 1.0 / (std::sqrt(double(hd)) * o.temperature());
  NaiveLsh out;
  out.buckets = buckets;
  auto ba = buckets.accessor<int64_t, 4>();
  torch::Tensor heads = torch::zeros({B, H, T, hd}, torch::kDouble);
  torch::Tensor weights = torch::zeros({B, H, T, T}, torch::kDouble);
  torch::Tensor count = torch::zeros({B, H, T, 1}, torch::kDouble);
  for (int64_t r = 0; r < R; ++r) {
    auto res = testing::naive_zoo_attention(
        attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, H, scale, x,
        [&](int64_t b, int64_t h, int64_t i, int64_t j) {
          return ba[r][b][h][i] == ba[r][b][h][j] && (!keep.defined() || keep[i][j].item<bool>());
        });
    heads += res.heads;
    weights += res.weights;
    // a round in which the query saw no key does not count
    count += (res.weights.sum(-1, true) > 0.5).to(torch::kDouble);
  }
  count = count.clamp_min(1.0);
  out.result.heads = heads / count;
  out.result.weights = weights / count;
  out.result.output = testing::naive_linear(
      out.result.heads.transpose(1, 2).reshape({B, T, o.dim()}), attn->o_proj);
  return out;
}

TEST(LSHAttention, MatchesNaiveReimplementation) {
  for (int64_t rounds : {1, 3}) {
    for (int64_t bucket : {3, 4, 100}) {
      torch::manual_seed(0);
      LSHAttention attn(LSHAttentionOptions(32, 4)
                            .bucket_size(bucket)
                            .num_hashes(rounds)
                            .seed(5)
                            .bias(true)
                            .temperature(0.9));
      torch::Tensor x = torch::randn({2, 11, 32});
      NaiveLsh expected = naive_lsh(attn, x);
      EXPECT_TRUE(torch::equal(attn->buckets(x), expected.buckets)) << rounds << " " << bucket;
      AttentionOutput out = attn->forward_with_aux(x);
      EXPECT_LT(max_abs_diff(out.output, expected.result.output), 1e-5) << rounds << " " << bucket;
      EXPECT_TRUE(testing::close(out.attn_weights, expected.result.weights));
    }
  }
}

// attzoo test_lsh: rows sum to 1 (1e-5); masked positions are exactly 0; stored weights are
// the weights (here: zero outside each query's buckets).
TEST(LSHAttention, UpstreamRowsSumToOneAndMaskedAreZero) {
  torch::manual_seed(1);
  LSHAttention attn(LSHAttentionOptions(32, 4).bucket_size(4).num_hashes(2));
  torch::Tensor x = torch::randn({2, 16, 32});
  torch::Tensor w = attn->forward_with_aux(x).attn_weights;
  ASSERT_EQ(w.sizes(), torch::IntArrayRef({2, 4, 16, 16}));
  EXPECT_LT((w.sum(-1) - 1).abs().max().item<double>(), 1e-5);
  torch::Tensor b = attn->buckets(x);  // [2, B, H, T]
  torch::Tensor shared =
      (b[0].unsqueeze(-1) == b[0].unsqueeze(-2)) | (b[1].unsqueeze(-1) == b[1].unsqueeze(-2));
  EXPECT_EQ(w.masked_select(shared.logical_not()).abs().max().item<float>(), 0.0f);
  EXPECT_GT(w.diagonal(0, 2, 3).min().item<float>(), 0.0f);  // a token sees itself

  torch::Tensor keep = torch::ones({16, 16}, torch::kBool);
  keep.select(1, 3).fill_(false);
  keep[5].narrow(0, 0, 8).fill_(false);
  // masked keys: exactly zero weight, through the module's masked forward vs the naive one
  NaiveLsh expected = naive_lsh(attn, x, keep);
  AttentionOutput masked = attn->forward_with_aux(x, keep);
  EXPECT_EQ(masked.attn_weights.masked_select(keep.logical_not().expand_as(masked.attn_weights))
                .abs()
                .max()
                .item<float>(),
            0.0f);
  EXPECT_LT(max_abs_diff(masked.output, expected.result.output), 1e-5);
  EXPECT_TRUE(testing::close(masked.attn_weights, expected.result.weights));
  EXPECT_TRUE(testing::close(attn(x, keep), masked.output));
  // a row sums to 1, or to 0 when the mask hid every key of its buckets
  torch::Tensor sums = masked.attn_weights.sum(-1);
  EXPECT_TRUE((((sums - 1).abs() < 1e-5) | (sums == 0)).all().item<bool>());
}

TEST(LSHAttention, ReproducibleFromTheSeed) {
  torch::manual_seed(2);
  LSHAttention a(LSHAttentionOptions(32, 4).bucket_size(2).seed(0));
  LSHAttention b(LSHAttentionOptions(32, 4).bucket_size(2).seed(1));
  testing::copy_parameters(*a, *b);
  torch::Tensor x = torch::randn({1, 16, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(a(x), a(x)));
  EXPECT_TRUE(torch::equal(a->rotations(16), a->rotations(16)));
  EXPECT_FALSE(torch::equal(a->buckets(x), b->buckets(x)));
  // the global RNG is neither used nor disturbed
  torch::manual_seed(3);
  torch::Tensor expected = torch::rand({4});
  torch::manual_seed(3);
  a(x);
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected));
  // angular hashing: scaling the queries keeps the buckets (no bias here)
  EXPECT_TRUE(torch::equal(a->buckets(x * 3.0), a->buckets(x)));
  torch::Tensor bk = a->buckets(x);
  EXPECT_EQ(bk.sizes(), torch::IntArrayRef({1, 1, 4, 16}));
  EXPECT_GE(bk.min().item<int64_t>(), 0);
  EXPECT_LT(bk.max().item<int64_t>(), 8);
}

TEST(LSHAttention, ParametersAndPrint) {
  LSHAttention attn(16, 2);
  EXPECT_EQ(attn->named_parameters().size(), 4u);
  EXPECT_NE(attn->named_parameters().find("k_proj.weight"), nullptr);
  EXPECT_FALSE(attn->supports_decoding());
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::LSHAttention(dim=16, num_heads=2, bucket_size=64, num_hashes=1, seed=0, "
            "temperature=1, dropout=0, bias=false, rope=none)");
}

// attzoo test_lsh: "bucket_size must be positive", "num_hashes must be positive".
TEST(LSHAttention, ErrorsNameTheArgument) {
  auto opts = [] { return LSHAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(LSHAttention(30, 4), HasSubstr("LSHAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(LSHAttention(0, 4), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LSHAttention(32, 0), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LSHAttention(opts().bucket_size(0)),
                       HasSubstr("bucket_size must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LSHAttention(opts().num_hashes(-1)),
                       HasSubstr("num_hashes must be positive, got -1"));
  ATTNKIT_EXPECT_ERROR(LSHAttention(opts().temperature(0)),
                       HasSubstr("temperature must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LSHAttention(opts().dropout(1)),
                       HasSubstr("dropout must be in [0, 1), got 1"));
  ATTNKIT_EXPECT_ERROR(LSHAttention(opts())->rotations(0),
                       HasSubstr("seq_len must be positive, got 0"));
}

// With rope, the buckets hash the rotated queries (one bucket when T <= bucket_size, so the
// output is rotary full attention).
TEST(LSHAttention, MatchesNaiveWithRope) {
  torch::manual_seed(7);
  LSHAttention attn(LSHAttentionOptions(32, 4).bucket_size(16).rope(
      RopeOptions().style(RopeStyle::kInterleaved)));
  torch::Tensor x = torch::randn({2, 10, 32});
  auto expected = testing::naive_zoo_attention(
      attn->q_proj, attn->k_proj, attn->v_proj, attn->o_proj, 4, 1.0 / std::sqrt(8.0), x,
      [](int64_t, int64_t, int64_t, int64_t) { return true; }, {},
      [](const torch::Tensor& t) { return testing::naive_rope_interleaved(t, 10000.0); });
  EXPECT_LT(max_abs_diff(attn(x), expected.output), 1e-5);
  // with several buckets, rope changes the hashing of the queries
  LSHAttention many(LSHAttentionOptions(32, 4).bucket_size(2).rope(RopeOptions()));
  LSHAttention plain(LSHAttentionOptions(32, 4).bucket_size(2));
  testing::copy_parameters(*many, *plain);
  EXPECT_FALSE(torch::equal(many->buckets(x), plain->buckets(x)));
  ATTNKIT_EXPECT_ERROR(LSHAttention(LSHAttentionOptions(32, 4).rope(RopeOptions().dim(10))),
                       HasSubstr("LSHAttention"),
                       HasSubstr("rope dim (10) must be <= head_dim (8)"));
}

}  // namespace
}  // namespace attnkit
