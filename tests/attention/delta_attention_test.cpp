#include <attnkit/attention/delta_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/naive.h"

#include <cmath>
#include <functional>
#include <limits>
#include <sstream>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

// Delta attention is causal by construction (attnhut has no non-causal form): every
// configuration is a causal one, the stride and window varied.
ATTNKIT_CONTRACT_SUITE(
    DeltaAttention,
    ContractCase{"window3_sink1_stride4",
                 [] {
                   return as_attention(
                       DeltaAttention(DeltaAttentionOptions(32, 4).window(3).sink(1).stride(4)));
                 },
                 true, /*takes_mask=*/false},
    ContractCase{"stride1",
                 [] {
                   return as_attention(
                       DeltaAttention(DeltaAttentionOptions(24, 3).window(2).sink(0).stride(1)));
                 },
                 true, false},
    ContractCase{"stride5_no_sink_bias",
                 [] {
                   return as_attention(DeltaAttention(
                       DeltaAttentionOptions(16, 2).window(2).sink(0).stride(5).bias(true)));
                 },
                 true, false, /*batch_size=*/2, /*seq_len=*/13},
    ContractCase{"defaults", [] { return as_attention(DeltaAttention(16, 2)); }, true, false});

// Softmax attention of query row r of one head over the keys `keep(r, j)` admits (double loops).
torch::Tensor naive_row(const torch::Tensor& q,
                        const torch::Tensor& k,
                        const torch::Tensor& v,
                        int64_t r,
                        const std::function<bool(int64_t, int64_t)>& keep) {
  const int64_t T = k.size(0), D = q.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> logit(T, -std::numeric_limits<double>::infinity());
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < T; ++j) {
    if (!keep(r, j)) continue;
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += q[r][d].item<double>() * k[j][d].item<double>();
    logit[j] = s * scale;
    m = std::max(m, logit[j]);
  }
  double denom = 0;
  for (int64_t j = 0; j < T; ++j) denom += std::exp(logit[j] - m);
  torch::Tensor out = torch::zeros({v.size(1)}, torch::kDouble);
  for (int64_t j = 0; j < T; ++j) out += std::exp(logit[j] - m) / denom * v[j];
  return out;
}

// docs/catalog.md, "Delta attention", written out on the module's weights.
torch::Tensor naive_delta(DeltaAttention& attn, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  const auto& o = attn->options;
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), H = o.num_heads(), hd = D / H;
  auto lin = [](const torch::Tensor& in, const torch::nn::Linear& l) {
    torch::Tensor y = in.matmul(l->weight.to(torch::kDouble).t());
    return l->bias.defined() ? y + l->bias.to(torch::kDouble) : y;
  };
  torch::Tensor xd = x.to(torch::kDouble);
  torch::Tensor q = lin(xd, attn->q_proj), k = lin(xd, attn->k_proj), v = lin(xd, attn->v_proj);
  auto sparse_keep = [&](int64_t i, int64_t j) {
    return j <= i && (j > i - o.window() || j < o.sink());
  };
  auto dense_keep = [](int64_t i, int64_t j) { return j <= i; };
  torch::Tensor merged = torch::zeros({B, T, D}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      torch::Tensor qh = q[b].narrow(1, h * hd, hd), kh = k[b].narrow(1, h * hd, hd);
      torch::Tensor vh = v[b].narrow(1, h * hd, hd);
      for (int64_t r = 0; r < T; ++r) {
        const int64_t a = r / o.stride() * o.stride();
        torch::Tensor row = naive_row(qh, kh, vh, r, sparse_keep) +
                            naive_row(qh, kh, vh, a, dense_keep) -
                            naive_row(qh, kh, vh, a, sparse_keep);
        merged[b][r].narrow(0, h * hd, hd).copy_(row);
      }
    }
  }
  return lin(merged, attn->o_proj);
}

TEST(DeltaAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  DeltaAttention attn(DeltaAttentionOptions(24, 3).window(3).sink(2).stride(4).bias(true));
  torch::Tensor x = torch::randn({2, 13, 24});
  EXPECT_LT(max_abs_diff(attn(x), naive_delta(attn, x)), 1e-5);
}

// attnhut test_delta::test_shape
TEST(DeltaAttention, UpstreamShape) {
  torch::manual_seed(0);
  DeltaAttention attn(DeltaAttentionOptions(32, 4).window(4).sink(2).stride(4));
  torch::Tensor x = torch::randn({2, 20, 32});
  torch::Tensor y = attn(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

// attnhut test_delta::test_causal (conftest.assert_causal)
TEST(DeltaAttention, UpstreamCausal) {
  torch::manual_seed(0);
  DeltaAttention attn(DeltaAttentionOptions(32, 4).window(4).sink(2).stride(4));
  attn->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({1, 16, 32});
  torch::Tensor x2 = x.clone();
  x2.select(1, 15).add_(5.0);
  torch::Tensor y = attn(x), y2 = attn(x2);
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 15), y2.narrow(1, 0, 15), 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(y.narrow(1, 15, 1), y2.narrow(1, 15, 1), 1e-4, 1e-4));
}

// Full causal attention on the module's weights, with the shared naive loops.
torch::Tensor full_causal(DeltaAttention& attn, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), H = attn->options.num_heads();
  auto heads = [&](const torch::nn::Linear& l) {
    return x.to(torch::kDouble)
        .matmul(l->weight.to(torch::kDouble).t())
        .view({B, T, H, D / H})
        .transpose(1, 2);
  };
  torch::Tensor o = testing::naive_attention(heads(attn->q_proj), heads(attn->k_proj),
                                             heads(attn->v_proj), 1.0 / std::sqrt(D / H), true);
  return o.transpose(1, 2).reshape({B, T, D}).matmul(attn->o_proj->weight.to(torch::kDouble).t());
}

// attnhut test_delta::test_stride_one_recovers_full_attention
TEST(DeltaAttention, UpstreamStrideOneRecoversFullAttention) {
  torch::manual_seed(0);
  DeltaAttention attn(DeltaAttentionOptions(32, 4).window(4).sink(2).stride(1));
  torch::Tensor x = torch::randn({2, 16, 32});
  EXPECT_LT(max_abs_diff(attn(x), full_causal(attn, x)), 1e-5);
  // and a real stride does not: the check can fail
  DeltaAttention strided(DeltaAttentionOptions(32, 4).window(4).sink(2).stride(4));
  testing::copy_parameters(*attn, *strided);
  EXPECT_GT(max_abs_diff(strided(x), full_causal(attn, x)), 1e-3);
}

TEST(DeltaAttention, WideWindowIsFullAttentionForAnyStride) {
  torch::manual_seed(1);
  DeltaAttention attn(DeltaAttentionOptions(16, 2).window(12).sink(0).stride(5));
  torch::Tensor x = torch::randn({1, 12, 16});
  EXPECT_LT(max_abs_diff(attn(x), full_causal(attn, x)), 1e-5);
}

TEST(DeltaAttention, EffectiveWeightsReproduceTheOutput) {
  torch::manual_seed(2);
  DeltaAttention attn(DeltaAttentionOptions(16, 2).window(2).sink(1).stride(3));
  const int64_t B = 2, T = 10, H = 2, hd = 8;
  torch::Tensor x = torch::randn({B, T, 16});
  AttentionOutput out = attn->forward_with_aux(x);
  ASSERT_EQ(out.attn_weights.sizes(), torch::IntArrayRef({B, H, T, T}));
  EXPECT_LT(max_abs_diff(out.attn_weights.sum(-1), torch::ones({B, H, T})), 1e-5);
  EXPECT_TRUE((out.attn_weights.triu(1) == 0).all().item<bool>());
  torch::NoGradGuard no_grad;
  torch::Tensor v = attn->v_proj(x).view({B, T, H, hd}).transpose(1, 2);
  torch::Tensor merged = out.attn_weights.matmul(v).transpose(1, 2).reshape({B, T, 16});
  EXPECT_LT(max_abs_diff(attn->o_proj(merged), out.output), 1e-5);
}

TEST(DeltaAttention, DecodingAcrossAnchorsInAnyChunking) {
  torch::manual_seed(3);
  DeltaAttention attn(DeltaAttentionOptions(16, 2).window(3).sink(1).stride(4));
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 17, 16});
  torch::Tensor full = attn(x);
  for (std::vector<int64_t> chunks :
       {std::vector<int64_t>{3, 3, 3, 3, 3, 2}, {2, 7, 1, 1, 6}, {4, 4, 4, 5}, {17}}) {
    DecodeState state = attn->init_state(2);
    std::vector<torch::Tensor> parts;
    int64_t t = 0;
    for (int64_t len : chunks) {
      parts.push_back(attn(x.narrow(1, t, len), state));
      t += len;
    }
    EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), 1e-5)
        << "chunks " << ::testing::PrintToString(chunks);
    // k and v for 17 tokens plus one anchor correction [B, H, 1, hd]
    EXPECT_EQ(state.bytes(), (2 * 2 * 17 * 8 * 2 + 2 * 2 * 8) * 4);
  }
}

TEST(DeltaAttention, ParametersAndPrint) {
  DeltaAttention attn(DeltaAttentionOptions(16, 2).bias(true));
  auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), 8u);
  for (const char* name : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
    auto* w = params.find(std::string(name) + ".weight");
    ASSERT_NE(w, nullptr) << name;
    EXPECT_EQ(w->sizes(), torch::IntArrayRef({16, 16}));
    EXPECT_NE(params.find(std::string(name) + ".bias"), nullptr) << name;
  }
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::DeltaAttention(dim=16, num_heads=2, window=256, sink=4, stride=16, "
            "bias=true)");
}

TEST(DeltaAttention, ErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(DeltaAttention(30, 4), HasSubstr("DeltaAttention"),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(DeltaAttention(-8, 2), HasSubstr("dim must be positive, got -8"));
  ATTNKIT_EXPECT_ERROR(DeltaAttention(16, 0), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(DeltaAttention(DeltaAttentionOptions(16, 2).window(0)),
                       HasSubstr("window must be >= 1"), HasSubstr("got 0"));
  ATTNKIT_EXPECT_ERROR(DeltaAttention(DeltaAttentionOptions(16, 2).sink(-1)),
                       HasSubstr("sink must be >= 0, got -1"));
  ATTNKIT_EXPECT_ERROR(DeltaAttention(DeltaAttentionOptions(16, 2).stride(0)),
                       HasSubstr("stride must be >= 1, got 0"));
  DeltaAttention attn(16, 2);
  ATTNKIT_EXPECT_ERROR(attn(torch::randn({1, 4, 16}), torch::ones({4, 4}, torch::kBool)),
                       HasSubstr("DeltaAttention: does not take an attn_mask"));
}

}  // namespace
}  // namespace attnkit
