#include <attnkit/attention/linear_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/naive.h"
#include "support/tolerance.h"
#include "support/zoo_naive.h"

#include <cmath>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

ATTNKIT_CONTRACT_SUITE(
    LinearAttention,
    ContractCase{"non_causal", [] { return as_attention(LinearAttention(32, 4)); }, false},
    ContractCase{"causal_chunked",
                 [] {
                   return as_attention(
                       LinearAttention(LinearAttentionOptions(32, 4).causal(true).chunk_size(4)));
                 },
                 true},
    ContractCase{"causal_relu_features_bias",
                 [] {
                   return as_attention(LinearAttention(LinearAttentionOptions(24, 3)
                                                           .causal(true)
                                                           .feature_dim(5)
                                                           .feature_map(LinearFeatureMap::kRelu)
                                                           .chunk_size(3)
                                                           .bias(true)));
                 },
                 true, true, 2, 13},
    ContractCase{
        "one_head_wide_features",
        [] { return as_attention(LinearAttention(LinearAttentionOptions(16, 1).feature_dim(24))); },
        false},
    ContractCase{"causal_rope",
                 [] {
                   return as_attention(LinearAttention(
                       LinearAttentionOptions(32, 4).causal(true).chunk_size(4).rope(
                           RopeOptions().style(RopeStyle::kInterleaved))));
                 },
                 true});

double phi(double x, LinearFeatureMap map) {
  if (map == LinearFeatureMap::kRelu) return x > 0 ? x : 0.0;
  return x > 0 ? x + 1.0 : std::exp(x);  // elu(x) + 1
}

struct NaiveLinear {
  torch::Tensor output;   // [B, T, D]
  torch::Tensor weights;  // [B, H, T, T]
};

// Katharopoulos et al. (2020), eq. 5-6, by loops in double: a_ij = phi(q_i) . phi(k_j) over the
// visible keys, out_i = sum_j a_ij v_j / (sum_j a_ij + eps). With rope (interleaved over all F
// channels, attzoo's form), q and k of every head rotate by their position before phi.
NaiveLinear naive_linear_attention(LinearAttention& attn,
                                   const torch::Tensor& x,
                                   const torch::Tensor& keep = {} /* [B, T, T] */) {
  torch::NoGradGuard no_grad;
  const auto& o = attn->options;
  const int64_t B = x.size(0), T = x.size(1), D = o.dim(), H = o.num_heads();
  const int64_t F = o.feature_dim(), Dv = D / H;
  torch::Tensor q = testing::naive_linear(x, attn->q_proj);
  torch::Tensor k = testing::naive_linear(x, attn->k_proj);
  if (o.rope()) {
    EXPECT_EQ(o.rope()->style(), RopeStyle::kInterleaved);
    EXPECT_EQ(o.rope()->dim(), 0);
    auto rotate = [&](const torch::Tensor& t) {
      return testing::naive_rope_interleaved(t.view({B, T, H, F}), o.rope()->theta())
          .reshape({B, T, H * F});
    };
    q = rotate(q);
    k = rotate(k);
  }
  torch::Tensor v = testing::naive_linear(x, attn->v_proj);
  auto qa = q.accessor<double, 3>(), ka = k.accessor<double, 3>(), va = v.accessor<double, 3>();
  torch::Tensor merged = torch::zeros({B, T, D}, torch::kDouble);
  torch::Tensor weights = torch::zeros({B, H, T, T}, torch::kDouble);
  auto ma = merged.accessor<double, 3>();
  auto wa = weights.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> a(T, 0.0);
        double total = 0;
        for (int64_t j = 0; j < T; ++j) {
          if (o.causal() && j > i) continue;
          if (keep.defined() && !keep[b][i][j].item<bool>()) continue;
          for (int64_t f = 0; f < F; ++f) {
            a[j] += phi(qa[b][i][h * F + f], o.feature_map()) *
                    phi(ka[b][j][h * F + f], o.feature_map());
          }
          total += a[j];
        }
        for (int64_t j = 0; j < T; ++j) {
          wa[b][h][i][j] = a[j] / (total + o.eps());
          for (int64_t d = 0; d < Dv; ++d)
            ma[b][i][h * Dv + d] += wa[b][h][i][j] * va[b][j][h * Dv + d];
        }
      }
    }
  }
  return {testing::naive_linear(merged, attn->o_proj), weights};
}

TEST(LinearAttention, MatchesNaiveReimplementation) {
  for (bool causal : {false, true}) {
    for (auto map : {LinearFeatureMap::kEluPlusOne, LinearFeatureMap::kRelu}) {
      torch::manual_seed(0);
      LinearAttention attn(LinearAttentionOptions(32, 4)
                               .causal(causal)
                               .feature_map(map)
                               .feature_dim(6)
                               .chunk_size(4)
                               .bias(true));
      torch::Tensor x = torch::randn({2, 11, 32});
      NaiveLinear expected = naive_linear_attention(attn, x);
      AttentionOutput out = attn->forward_with_aux(x);
      EXPECT_LT(max_abs_diff(out.output, expected.output), 1e-5) << causal << to_string(map);
      EXPECT_TRUE(testing::close(out.attn_weights, expected.weights)) << causal;
    }
  }
}

TEST(LinearAttention, RopeMatchesNaiveReimplementation) {
  for (bool causal : {false, true}) {
    torch::manual_seed(4);
    LinearAttention attn(LinearAttentionOptions(32, 4)
                             .causal(causal)
                             .feature_dim(6)
                             .chunk_size(4)
                             .rope(RopeOptions().style(RopeStyle::kInterleaved).theta(500.0)));
    torch::Tensor x = torch::randn({2, 11, 32});
    NaiveLinear expected = naive_linear_attention(attn, x);
    AttentionOutput out = attn->forward_with_aux(x);
    EXPECT_LT(max_abs_diff(out.output, expected.output), 1e-5) << causal;
    EXPECT_TRUE(testing::close(out.attn_weights, expected.weights)) << causal;
    EXPECT_LT(max_abs_diff(attn(x), expected.output), 1e-5) << causal;
  }
  // attzoo's LinearSelfAttention(d_model=16, feature_dim=24, rope=True): one head, theta 10000
  torch::manual_seed(5);
  LinearAttention zoo(LinearAttentionOptions(16, 1).feature_dim(24).rope(
      RopeOptions().style(RopeStyle::kInterleaved)));
  torch::Tensor x = torch::randn({2, 9, 16});
  EXPECT_LT(max_abs_diff(zoo(x), naive_linear_attention(zoo, x).output), 1e-5);
}

// The decode state continues the rotation at state.length(), so prefill + token-by-token
// decoding reproduces the full causal forward (in double, to rounding).
TEST(LinearAttention, RopeDecodingRotatesAtAbsolutePositions) {
  torch::manual_seed(6);
  LinearAttention attn(LinearAttentionOptions(32, 4).causal(true).chunk_size(3).rope(
      RopeOptions().style(RopeStyle::kInterleaved)));
  attn->to(torch::kDouble);
  torch::Tensor x = torch::randn({2, 10, 32}, torch::kDouble);
  torch::NoGradGuard no_grad;
  torch::Tensor full = attn(x);
  DecodeState state = attn->init_state(2);
  std::vector<torch::Tensor> parts = {attn(x.narrow(1, 0, 4), state)};
  for (int64_t t = 4; t < 10; ++t) parts.push_back(attn(x.narrow(1, t, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), 1e-12);
  // and rope changes the output (it is not a no-op)
  LinearAttention plain(LinearAttentionOptions(32, 4).causal(true).chunk_size(3));
  plain->to(torch::kDouble);
  testing::copy_parameters(*attn, *plain);
  EXPECT_GT(max_abs_diff(plain(x), full), 1e-6);
}

TEST(LinearAttention, ChunkSizeDoesNotChangeTheCausalForm) {
  torch::manual_seed(1);
  LinearAttention ref(LinearAttentionOptions(32, 4).causal(true).chunk_size(1));
  torch::Tensor x = torch::randn({2, 19, 32});
  torch::NoGradGuard no_grad;
  torch::Tensor y = ref(x);
  for (int64_t c : {2, 5, 19, 64}) {
    LinearAttention other(LinearAttentionOptions(32, 4).causal(true).chunk_size(c));
    testing::copy_parameters(*ref, *other);
    EXPECT_LT(max_abs_diff(other(x), y), 1e-5) << "chunk " << c;
  }
}

// attzoo test_linear: weights >= -1e-6 and rows sum to about 1 (here to 1e-4: the rows are the
// exact normalised products); padding-mask and attention-mask forms are accepted; batch
// independence (the contract suite).
TEST(LinearAttention, UpstreamWeightsAndMasks) {
  torch::manual_seed(2);
  LinearAttention attn(32, 4);
  torch::Tensor x = torch::randn({2, 9, 32});
  torch::Tensor w = attn->forward_with_aux(x).attn_weights;
  ASSERT_EQ(w.sizes(), torch::IntArrayRef({2, 4, 9, 9}));
  EXPECT_GE(w.min().item<double>(), 0.0);
  EXPECT_LT((w.sum(-1) - 1).abs().max().item<double>(), 1e-4);
  // padding: the last two keys of sample 1 are padding
  torch::Tensor keep = torch::ones({2, 9, 9}, torch::kBool);
  keep[1].narrow(1, 7, 2).fill_(false);
  NaiveLinear padded = naive_linear_attention(attn, x, keep);
  EXPECT_LT(max_abs_diff(attn(x, keep), padded.output), 1e-5);
  EXPECT_LT(max_abs_diff(attn(x, keep.unsqueeze(1)), padded.output), 1e-5);
  // a causal [T, T] mask on the non-causal module is the causal module
  LinearAttention causal(LinearAttentionOptions(32, 4).causal(true));
  testing::copy_parameters(*attn, *causal);
  torch::Tensor tril = torch::ones({9, 9}, torch::kBool).tril();
  EXPECT_LT(max_abs_diff(attn(x, tril), causal(x)), 1e-5);
  ATTNKIT_EXPECT_ERROR(attn(x, torch::zeros({9, 9})), HasSubstr("LinearAttention"),
                       HasSubstr("bool attn_mask"));
}

TEST(LinearAttention, DecodeStateIsConstantSize) {
  torch::manual_seed(3);
  LinearAttention attn(LinearAttentionOptions(32, 4).causal(true).feature_dim(6));
  DecodeState state = attn->init_state(2);
  torch::NoGradGuard no_grad;
  attn(torch::randn({2, 3, 32}), state);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"S", "z"}));
  const int64_t bytes = (2 * 4 * 6 * 8 + 2 * 4 * 6) * 4;  // S [B, H, F, Dv] and z [B, H, F]
  EXPECT_EQ(state.bytes(), bytes);
  attn(torch::randn({2, 40, 32}), state);
  for (int i = 0; i < 5; ++i) attn(torch::randn({2, 1, 32}), state);
  EXPECT_EQ(state.bytes(), bytes);
  EXPECT_EQ(state.length(), 48);
  EXPECT_FALSE(LinearAttention(32, 4)->supports_decoding());
}

TEST(LinearAttention, ParametersAndPrint) {
  LinearAttention attn(LinearAttentionOptions(16, 2).feature_dim(3));
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), 4u);
  EXPECT_EQ(params.find("q_proj.weight")->sizes(), torch::IntArrayRef({6, 16}));
  EXPECT_EQ(params.find("k_proj.weight")->sizes(), torch::IntArrayRef({6, 16}));
  EXPECT_EQ(params.find("v_proj.weight")->sizes(), torch::IntArrayRef({16, 16}));
  EXPECT_EQ(params.find("o_proj.weight")->sizes(), torch::IntArrayRef({16, 16}));
  std::ostringstream s;
  LinearAttention(16, 2)->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::LinearAttention(dim=16, num_heads=2, feature_dim=8, "
            "feature_map=elu_plus_one, causal=false, eps=1e-06, chunk_size=64, bias=false, "
            "rope=none)");
}

TEST(LinearAttention, ErrorsNameTheArgument) {
  auto opts = [] { return LinearAttentionOptions(32, 4); };
  ATTNKIT_EXPECT_ERROR(LinearAttention(30, 4), HasSubstr("LinearAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(LinearAttention(0, 4), HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LinearAttention(32, 0), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LinearAttention(opts().feature_dim(-1)),
                       HasSubstr("feature_dim must be >= 0 (0 = dim / num_heads), got -1"));
  ATTNKIT_EXPECT_ERROR(LinearAttention(opts().eps(0)), HasSubstr("eps must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LinearAttention(opts().chunk_size(0)),
                       HasSubstr("chunk_size must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LinearAttention(opts().feature_dim(5).rope(RopeOptions())),
                       HasSubstr("LinearAttention"), HasSubstr("rope dim must be even, got 5"));
  ATTNKIT_EXPECT_ERROR(LinearAttention(opts().rope(RopeOptions().dim(10))),
                       HasSubstr("LinearAttention"),
                       HasSubstr("rope dim (10) must be <= head_dim (8)"));
}

}  // namespace
}  // namespace attnkit
