#include <attnkit/attention/heavily_compressed_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "support/contract.h"
#include "support/naive.h"
#include "support/tolerance.h"

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

constexpr double kInf = std::numeric_limits<double>::infinity();

HeavilyCompressedAttentionOptions small_options() {
  return HeavilyCompressedAttentionOptions(/*dim=*/32, /*num_heads=*/4)
      .compression_rate(2)
      .window(3);
}

HeavilyCompressedAttentionOptions rope_options() {
  return HeavilyCompressedAttentionOptions(32, 4).compression_rate(3).window(4).kv_dim(6).rope(
      RopeOptions().dim(4).style(RopeStyle::kHalf).channels(RopeChannels::kFirst));
}

ATTNKIT_CONTRACT_SUITE(
    HeavilyCompressedAttention,
    ContractCase{"rate2_window3",
                 [] { return as_attention(HeavilyCompressedAttention(small_options())); }, true,
                 /*takes_mask=*/true},
    ContractCase{"groups2_kv6_qlora10_rate3",
                 [] {
                   return as_attention(
                       HeavilyCompressedAttention(HeavilyCompressedAttentionOptions(32, 4)
                                                      .compression_rate(3)
                                                      .window(4)
                                                      .kv_dim(6)
                                                      .q_lora_rank(10)
                                                      .num_groups(2)
                                                      .bias(true)));
                 },
                 true, true},
    ContractCase{
        "partial_rope_last_interleaved",
        [] {
          return as_attention(HeavilyCompressedAttention(small_options().kv_dim(8).rope(
              RopeOptions().dim(4).channels(RopeChannels::kLast).style(RopeStyle::kInterleaved))));
        },
        true, true},
    ContractCase{"window_covers_sequence",
                 [] {
                   return as_attention(HeavilyCompressedAttention(
                       HeavilyCompressedAttentionOptions(32, 2).compression_rate(4)));
                 },
                 true, true, /*batch_size=*/1, /*seq_len=*/13});

// --- naive re-implementation of docs/catalog.md, "Heavily compressed attention", explicit
// loops in double

torch::Tensor D(const torch::Tensor& t) { return t.detach().to(torch::kDouble); }

// RoPE (rotate-half, first `rope_dim` channels) of one vector at `position` (may be negative).
torch::Tensor rope_at(const torch::Tensor& v, int64_t rope_dim, int64_t position) {
  return testing::naive_rope_half(v.view({1, 1, 1, v.size(0)}), rope_dim, 1e4, 0 + position)
      .view({-1});
}

torch::Tensor naive_hca(HeavilyCompressedAttention& m,
                        const torch::Tensor& x_in,
                        int64_t rope_dim = 0) {
  const auto& o = m->options;
  const int64_t B = x_in.size(0), T = x_in.size(1), H = o.num_heads(), c = o.kv_dim();
  const int64_t r = o.compression_rate(), W = o.window(), G = o.num_groups();
  const int64_t nb = (T + r - 1) / r;
  torch::Tensor x = D(x_in);
  auto lin = [&](const torch::nn::Linear& l, const torch::Tensor& in) {
    torch::Tensor y = in.matmul(D(l->weight).t());
    return l->bias.defined() ? y + D(l->bias) : y;
  };
  torch::Tensor kv = lin(m->kv, x), z = lin(m->z, x), pos_bias = D(m->pos_bias);
  // 1. pooling: per channel softmax over the block's tokens (missing tokens of the last block
  //    simply do not take part)
  torch::Tensor comp = torch::zeros({B, nb, c}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = 0; e < nb; ++e)
      for (int64_t ch = 0; ch < c; ++ch) {
        double mx = -kInf;
        for (int64_t i = 0; i < r && e * r + i < T; ++i)
          mx = std::max(mx, z[b][e * r + i][ch].item<double>() + pos_bias[i][ch].item<double>());
        double den = 0, num = 0;
        for (int64_t i = 0; i < r && e * r + i < T; ++i) {
          const double w =
              std::exp(z[b][e * r + i][ch].item<double>() + pos_bias[i][ch].item<double>() - mx);
          den += w;
          num += w * kv[b][e * r + i][ch].item<double>();
        }
        comp[b][e][ch] = num / den;
      }
  // 2. shared KV set, 3. queries
  torch::Tensor kvs = testing::naive_rms_norm(torch::cat({comp, kv}, 1), D(m->kv_norm), 1e-6);
  torch::Tensor q = testing::naive_rms_norm(lin(m->q_up, lin(m->q_down, x)).view({B, T, H, c}),
                                            D(m->q_norm), 1e-6);
  std::vector<int64_t> key_pos(nb + T);
  for (int64_t e = 0; e < nb; ++e) key_pos[e] = e * r;
  for (int64_t s = 0; s < T; ++s) key_pos[nb + s] = s;
  if (rope_dim > 0) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < nb + T; ++j) kvs[b][j] = rope_at(kvs[b][j], rope_dim, key_pos[j]);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) q[b][t][h] = rope_at(q[b][t][h], rope_dim, t);
    }
  }
  // 4./5. visibility, softmax with the sink column, keys = values
  torch::Tensor sink = D(m->sink);
  torch::Tensor heads = torch::zeros({B, T, H, c}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> logit(nb + T, -kInf);
        for (int64_t e = 0; e < nb; ++e)
          if ((e + 1) * r <= t)
            logit[e] = q[b][t][h].dot(kvs[b][e]).item<double>() / std::sqrt(double(c));
        for (int64_t s = 0; s < T; ++s)
          if (s <= t && s > t - W)
            logit[nb + s] = q[b][t][h].dot(kvs[b][nb + s]).item<double>() / std::sqrt(double(c));
        double mx = sink[h].item<double>();
        for (double l : logit) mx = std::max(mx, l);
        if (mx == -kInf) continue;  // nothing visible and sink -inf: zeros
        double den = std::exp(sink[h].item<double>() - mx);
        for (double l : logit) den += std::exp(l - mx);
        for (int64_t j = 0; j < nb + T; ++j)
          if (logit[j] > -kInf) heads[b][t][h] += std::exp(logit[j] - mx) / den * kvs[b][j];
        if (rope_dim > 0) heads[b][t][h] = rope_at(heads[b][t][h].clone(), rope_dim, -t);
      }
  // 6. grouped output projection
  const int64_t per = (H / G) * c;
  torch::Tensor flat = heads.reshape({B, T, H * c});
  std::vector<torch::Tensor> groups;
  for (int64_t g = 0; g < G; ++g)
    groups.push_back(flat.narrow(2, g * per, per).matmul(D(m->proj->w[g])));
  return lin(m->proj->out, torch::cat(groups, 2));
}

void randomize(HeavilyCompressedAttention& m) {
  torch::NoGradGuard no_grad;
  m->pos_bias.normal_(0, 1);
  m->q_norm.uniform_(0.5, 1.5);
  m->kv_norm.uniform_(0.5, 1.5);
  m->sink.normal_(0, 1);
}

TEST(HeavilyCompressedAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  for (auto options :
       {small_options(), small_options().compression_rate(4).window(2).num_groups(2),
        HeavilyCompressedAttentionOptions(24, 2).compression_rate(3).window(5).kv_dim(5).bias(
            true)}) {
    HeavilyCompressedAttention m(options);
    randomize(m);
    torch::Tensor x = torch::randn({2, 11, options.dim()});
    EXPECT_LT(max_abs_diff(m(x), naive_hca(m, x)), 1e-5) << options.compression_rate();
  }
}

TEST(HeavilyCompressedAttention, PartialRopeMatchesNaiveReimplementation) {
  torch::manual_seed(1);
  HeavilyCompressedAttention m(rope_options());
  randomize(m);
  torch::Tensor x = torch::randn({2, 10, 32});
  torch::Tensor y = m(x);
  EXPECT_LT(max_abs_diff(y, naive_hca(m, x, /*rope_dim=*/4)), 1e-5);
  EXPECT_GT(max_abs_diff(y, naive_hca(m, x, /*rope_dim=*/0)), 1e-3);  // the rotation matters
}

// attnhut test_hca_shape
TEST(HeavilyCompressedAttention, UpstreamShape) {
  torch::manual_seed(0);
  HeavilyCompressedAttention m(
      HeavilyCompressedAttentionOptions(32, 4).compression_rate(4).window(8));
  torch::Tensor y = m(torch::randn({2, 20, 32}));
  EXPECT_EQ(y.sizes().vec(), (std::vector<int64_t>{2, 20, 32}));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

// attnhut test_hca_causal (conftest.assert_causal: perturb the last token by +5, t = 16)
TEST(HeavilyCompressedAttention, UpstreamCausal) {
  torch::manual_seed(0);
  HeavilyCompressedAttention m(
      HeavilyCompressedAttentionOptions(32, 4).compression_rate(4).window(8));
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 16, 32});
  torch::Tensor x2 = x.clone();
  x2.narrow(1, 15, 1).add_(5.0);
  torch::Tensor y = m(x), y2 = m(x2);
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 15), y2.narrow(1, 0, 15), 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(y.narrow(1, 15, 1), y2.narrow(1, 15, 1), 1e-4, 1e-4));
}

TEST(HeavilyCompressedAttention, AttentionWeightsFollowVisibility) {
  torch::manual_seed(2);
  HeavilyCompressedAttention m(
      HeavilyCompressedAttentionOptions(32, 4).compression_rate(3).window(4));
  const int64_t T = 10, nb = 4, r = 3, W = 4;
  AttentionOutput out = m->forward_with_aux(torch::randn({2, T, 32}));
  ASSERT_EQ(out.attn_weights.sizes().vec(), (std::vector<int64_t>{2, 4, T, nb + T}));
  torch::Tensor seen = out.attn_weights > 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < nb; ++e)
      EXPECT_EQ(seen.select(2, t).select(2, e).all().item<bool>(), (e + 1) * r <= t)
          << t << " " << e;
    for (int64_t s = 0; s < T; ++s)
      EXPECT_EQ(seen.select(2, t).select(2, nb + s).all().item<bool>(), s <= t && s > t - W)
          << t << " " << s;
  }
  // the sink (logit 0) takes the rest of each row's mass
  torch::Tensor row_sums = out.attn_weights.sum(-1);
  EXPECT_TRUE((row_sums < 1).all().item<bool>());
  EXPECT_TRUE((row_sums > 0).all().item<bool>());
}

TEST(HeavilyCompressedAttention, RowsThatSeeNothingGiveZeros) {
  torch::manual_seed(3);
  // window 0: queries before the first complete block (t < r) see nothing at all
  HeavilyCompressedAttention m(
      HeavilyCompressedAttentionOptions(32, 4).compression_rate(4).window(0));
  for (double sink_value : {0.0, -kInf}) {
    {
      torch::NoGradGuard no_grad;
      m->sink.fill_(sink_value);
    }
    torch::Tensor x = torch::randn({2, 9, 32}, torch::requires_grad());
    torch::Tensor y = m(x);
    ASSERT_TRUE(torch::isfinite(y).all().item<bool>()) << "sink " << sink_value;
    EXPECT_EQ(y.narrow(1, 0, 4).abs().max().item<double>(), 0.0) << "sink " << sink_value;
    EXPECT_GT(y.narrow(1, 4, 5).abs().min().item<double>(), 0.0) << "sink " << sink_value;
    y.sum().backward();
    EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>()) << "sink " << sink_value;
  }
}

TEST(HeavilyCompressedAttention, DecodingWrapsTheRingAndMatchesFullForward) {
  torch::manual_seed(4);
  for (auto options :
       {HeavilyCompressedAttentionOptions(32, 4).compression_rate(3).window(5), rope_options(),
        HeavilyCompressedAttentionOptions(32, 4).compression_rate(4).window(0)}) {
    HeavilyCompressedAttention m(options);
    randomize(m);
    torch::NoGradGuard no_grad;
    torch::Tensor x = torch::randn({2, 23, 32});
    torch::Tensor full = m(x);
    DecodeState state = m->init_state(2);
    std::vector<torch::Tensor> parts;
    int64_t t = 0;
    for (int64_t len : {2, 7, 1, 1, 4, 8}) {  // chunks longer than the window and the block
      parts.push_back(m->forward(x.narrow(1, t, len), state));
      t += len;
    }
    EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), 1e-5) << options.window();
  }
}

// --- attn_mask

TEST(HeavilyCompressedAttention, CausalMaskChangesNothing) {
  torch::manual_seed(13);
  HeavilyCompressedAttention m(small_options().compression_rate(3));
  randomize(m);
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 17, 32});
  EXPECT_TRUE(testing::close(m(x, torch::ones({17, 17}, torch::kBool).tril()), m(x)));
}

// Perturbing tokens a query may not see changes nothing at that query: not through the raw
// window, not through an entry that pools them.
TEST(HeavilyCompressedAttention, MaskedKeysHaveNoInfluence) {
  const int64_t T = 24;
  for (const char* backend : {"fused", "reference"}) {
    SCOPED_TRACE(backend);
    testing::EnvGuard guard("ATTNKIT_BACKEND", backend);
    torch::manual_seed(15);
    HeavilyCompressedAttention m(small_options().compression_rate(3).window(6));
    randomize(m);
    torch::NoGradGuard no_grad;
    // queries 16.. may not see tokens 9..13 (nor entries 3 and 4, which pool them)
    torch::Tensor keep = torch::ones({2, 1, T, T}, torch::kBool);
    keep.narrow(2, 16, T - 16).narrow(3, 9, 5).fill_(false);
    torch::Tensor x = torch::randn({2, T, 32});
    torch::Tensor x2 = x.clone();
    x2.narrow(1, 9, 5).add_(torch::randn({2, 5, 32}) * 3.0);
    torch::Tensor y = m(x, keep), y2 = m(x2, keep);
    EXPECT_TRUE(testing::close(y.narrow(1, 16, T - 16), y2.narrow(1, 16, T - 16)));
    EXPECT_GT(max_abs_diff(y.narrow(1, 14, 2), y2.narrow(1, 14, 2)), 1e-3);
    EXPECT_GT(max_abs_diff(m(x).narrow(1, 16, T - 16), m(x2).narrow(1, 16, T - 16)), 1e-3);
    // rows the mask leaves whole are the unmasked forward's
    EXPECT_TRUE(testing::close(y.narrow(1, 0, 16), m(x).narrow(1, 0, 16)));
  }
}

// Entry 1 pools tokens 3..5. Hiding token 4 alone from query 10 hides the whole entry from it,
// so tokens 3 and 5 (kept, but outside query 10's window of 2) no longer reach it at all.
TEST(HeavilyCompressedAttention, HidingOneTokenHidesItsEntry) {
  torch::manual_seed(16);
  HeavilyCompressedAttention m(small_options().compression_rate(3).window(2));
  randomize(m);
  torch::NoGradGuard no_grad;
  const int64_t T = 12;
  torch::Tensor keep = torch::ones({T, T}, torch::kBool);
  keep[10][4] = false;
  torch::Tensor x = torch::randn({1, T, 32});
  torch::Tensor x2 = x.clone();
  x2.narrow(1, 3, 1).add_(3.0);
  x2.narrow(1, 5, 1).add_(3.0);
  EXPECT_TRUE(testing::close(m(x, keep).select(1, 10), m(x2, keep).select(1, 10)));
  EXPECT_GT(max_abs_diff(m(x).select(1, 10), m(x2).select(1, 10)), 1e-3);
}

TEST(HeavilyCompressedAttention, MaskErrors) {
  HeavilyCompressedAttention m(small_options());
  torch::Tensor x = torch::randn({2, 6, 32});
  ATTNKIT_EXPECT_ERROR(m(x, torch::zeros({6, 6})), HasSubstr("HeavilyCompressedAttention"),
                       HasSubstr("expected a bool attn_mask"));
  ATTNKIT_EXPECT_ERROR(m(x, torch::ones({2, 4, 6, 6}, torch::kBool)),
                       HasSubstr("HeavilyCompressedAttention"), HasSubstr("attn_mask"));
}

TEST(HeavilyCompressedAttention, DecodeStateHoldsEntriesRingAndPartialBlock) {
  HeavilyCompressedAttention m(
      HeavilyCompressedAttentionOptions(32, 4).compression_rate(4).window(5));
  torch::NoGradGuard no_grad;
  const int64_t c = 8, B = 2;
  DecodeState state = m->init_state(B);
  m->forward(torch::randn({B, 3, 32}), state);  // 3 tokens: no entry yet, ring of 3
  EXPECT_EQ(state.get("entries").size(1), 0);
  EXPECT_EQ(state.bytes(), B * 4 * (3 * c + 3 * 2 * c));
  m->forward(torch::randn({B, 6, 32}), state);  // 9 tokens: 2 entries, ring full (5), 1 pending
  EXPECT_EQ(state.get("entries").size(1), 2);
  EXPECT_EQ(state.get("window_kv").size(1), 5);
  EXPECT_EQ(state.get("pending").size(1), 1);
  EXPECT_EQ(state.bytes(), B * 4 * (2 * c + 5 * c + 1 * 2 * c));
  for (int i = 0; i < 3; ++i)
    m->forward(torch::randn({B, 1, 32}), state);  // 12: 3 entries, none pending
  EXPECT_EQ(state.bytes(), B * 4 * (3 * c + 5 * c));
  EXPECT_EQ(state.names(), (std::vector<std::string>{"entries", "pending", "window_kv"}));
}

TEST(HeavilyCompressedAttention, ParameterNamesFollowAttnhut) {
  HeavilyCompressedAttention m(
      HeavilyCompressedAttentionOptions(32, 4).compression_rate(4).num_groups(2));
  std::map<std::string, std::vector<int64_t>> expected = {
      {"kv.weight", {8, 32}},    {"z.weight", {8, 32}},
      {"pos_bias", {4, 8}},      {"q_down.weight", {16, 32}},
      {"q_up.weight", {32, 16}}, {"q_norm", {8}},
      {"kv_norm", {8}},          {"sink", {4}},
      {"proj.w", {2, 16, 8}},    {"proj.out.weight", {32, 16}}};
  auto params = m->named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
  EXPECT_TRUE(torch::equal(m->pos_bias, torch::zeros({4, 8})));
  EXPECT_TRUE(torch::equal(m->sink, torch::zeros({4})));
}

TEST(HeavilyCompressedAttention, DefaultsAndPrettyPrint) {
  HeavilyCompressedAttention m(64, 4);
  EXPECT_EQ(m->options.compression_rate(), 16);
  EXPECT_EQ(m->options.kv_dim(), 16);
  EXPECT_EQ(m->options.q_lora_rank(), 32);
  EXPECT_EQ(m->options.num_groups(), 4);
  EXPECT_EQ(m->options.window(), 64);
  EXPECT_TRUE(m->supports_decoding());
  std::ostringstream s;
  m->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::HeavilyCompressedAttention(dim=64, num_heads=4, compression_rate=16, "
            "kv_dim=16, q_lora_rank=32, num_groups=4, window=64, bias=false, norm_eps=1e-06, "
            "rope=none)");
}

TEST(HeavilyCompressedAttention, CloneIsIndependent) {
  HeavilyCompressedAttention m(small_options());
  auto copy = std::dynamic_pointer_cast<HeavilyCompressedAttentionImpl>(m->clone());
  ASSERT_NE(copy, nullptr);
  torch::Tensor x = torch::randn({1, 7, 32});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(copy->forward(x), m(x)));
  copy->sink.fill_(3.0);
  EXPECT_FALSE(torch::allclose(copy->forward(x), m(x)));
}

TEST(HeavilyCompressedAttention, ErrorsNameTheArgument) {
  using O = HeavilyCompressedAttentionOptions;
  auto make = [](O o) { HeavilyCompressedAttention m(o); };
  ATTNKIT_EXPECT_ERROR(make(O(0, 4)), HasSubstr("HeavilyCompressedAttention"),
                       HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 0)), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).compression_rate(0)),
                       HasSubstr("compression_rate must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).window(-1)), HasSubstr("window must be >= 0, got -1"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).num_groups(3)),
                       HasSubstr("num_heads (4) must be divisible by num_groups (3)"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).num_groups(-2)), HasSubstr("num_groups must be >= 0"),
                       HasSubstr("got -2"));
  ATTNKIT_EXPECT_ERROR(make(O(30, 4)), HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).kv_dim(-1)), HasSubstr("kv_dim must be >= 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).q_lora_rank(-3)), HasSubstr("q_lora_rank must be >= 0"),
                       HasSubstr("got -3"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).norm_eps(-1.0)), HasSubstr("norm_eps must be >= 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).rope(RopeOptions().dim(3))),
                       HasSubstr("HeavilyCompressedAttention"),
                       HasSubstr("rope dim must be even, got 3"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).rope(RopeOptions().dim(10))), HasSubstr("rope dim (10)"));
  ATTNKIT_EXPECT_ERROR(make(O(1, 1)), HasSubstr("dim (1) must be >= 2 to derive q_lora_rank"));
  EXPECT_NO_THROW(make(O(1, 1).q_lora_rank(1)));
  EXPECT_NO_THROW(make(O(30, 4).kv_dim(6)));  // kv_dim set: dim need not divide
}

TEST(GroupedOutputProjection, MatchesPerGroupMatmulsAndValidates) {
  torch::manual_seed(5);
  GroupedOutputProjection proj(GroupedOutputProjectionOptions(4, 3, 2, 10).group_dim(5));
  EXPECT_EQ(proj->w.sizes().vec(), (std::vector<int64_t>{2, 6, 5}));
  torch::Tensor o = torch::randn({2, 7, 4, 3});
  torch::Tensor flat = o.reshape({2, 7, 12});
  torch::Tensor expected =
      torch::cat({flat.narrow(2, 0, 6).matmul(proj->w[0]), flat.narrow(2, 6, 6).matmul(proj->w[1])},
                 2)
          .matmul(proj->out->weight.t());
  EXPECT_LT(max_abs_diff(proj(o), expected), 1e-5);
  ATTNKIT_EXPECT_ERROR(
      GroupedOutputProjection(GroupedOutputProjectionOptions(4, 3, 3, 10)),
      HasSubstr(
          "GroupedOutputProjection: num_groups (3) must be positive and divide num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(proj(torch::randn({2, 7, 12})),
                       HasSubstr("expected input [B, T, num_heads = 4"));
}

}  // namespace
}  // namespace attnkit
