#include <attnkit/attention/deepseek_sparse_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "support/contract.h"
#include "support/naive.h"
#include "support/tolerance.h"

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

Attention contract_module(DeepSeekSparseAttentionOptions options) {
  return as_attention(DeepSeekSparseAttention(options));
}

DeepSeekSparseAttentionOptions small(int64_t top_k) {
  return DeepSeekSparseAttentionOptions(/*dim=*/32, /*num_heads=*/4)
      .top_k(top_k)
      .num_index_heads(3)
      .index_head_dim(8);
}

ATTNKIT_CONTRACT_SUITE(
    DeepSeekSparseAttention,
    testing::with_aux_trained(ContractCase{"causal_top4", [] { return contract_module(small(4)); },
                                           true},
                              {"indexer."}),
    testing::with_aux_trained(
        ContractCase{"causal_top1_detached",
                     [] { return contract_module(small(1).detach_index(true)); }, true},
        {"indexer."}),
    testing::with_aux_trained(ContractCase{"causal_dense",
                                           [] { return contract_module(small(64)); }, true},
                              {"indexer."}),
    testing::with_aux_trained(
        ContractCase{"non_causal_bias",
                     [] { return contract_module(small(5).causal(false).bias(true)); }, false},
        {"indexer."}));

// --- a loop re-implementation of docs/catalog.md, "DeepSeek sparse attention", in double

struct NaiveDsa {
  torch::Tensor output;    // [B, T, D]
  torch::Tensor scores;    // [B, T, T], -inf where invisible
  torch::Tensor selected;  // bool [B, T, T]
};

NaiveDsa naive_dsa(const DeepSeekSparseAttention& m, const torch::Tensor& x_in) {
  torch::NoGradGuard no_grad;
  const auto& o = m->options;
  const int64_t B = x_in.size(0), T = x_in.size(1), D = o.dim(), H = o.num_heads(), hd = D / H;
  const int64_t Hi = o.num_index_heads(), di = o.index_head_dim();
  const double neg_inf = -std::numeric_limits<double>::infinity();
  auto d = [](const torch::Tensor& t) { return t.to(torch::kDouble); };
  torch::Tensor x = d(x_in);
  torch::Tensor qkv = x.matmul(d(m->qkv->weight).t());                      // [B, T, 3D]
  torch::Tensor iq = x.matmul(d(m->indexer->wq->weight).t()).contiguous();  // [B, T, Hi*di]
  torch::Tensor ik = x.matmul(d(m->indexer->wk->weight).t()).contiguous();  // [B, T, di]
  torch::Tensor iw = x.matmul(d(m->indexer->ww->weight).t()).contiguous();  // [B, T, Hi]
  auto qa = qkv.accessor<double, 3>();
  auto iqa = iq.accessor<double, 3>(), ika = ik.accessor<double, 3>(),
       iwa = iw.accessor<double, 3>();

  NaiveDsa r;
  r.scores = torch::full({B, T, T}, neg_inf, torch::kDouble);
  r.selected = torch::zeros({B, T, T}, torch::kBool);
  torch::Tensor heads = torch::zeros({B, T, H * hd}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int64_t> visible;
      for (int64_t s = 0; s < T; ++s) {
        if (o.causal() && s > t) continue;
        double score = 0;
        for (int64_t h = 0; h < Hi; ++h) {
          double dot = 0;
          for (int64_t c = 0; c < di; ++c) dot += iqa[b][t][h * di + c] * ika[b][s][c];
          score += iwa[b][t][h] * std::max(dot, 0.0);
        }
        r.scores[b][t][s] = score;
        visible.push_back(s);
      }
      // highest score first, the earlier key on ties
      auto sa = r.scores.accessor<double, 3>();
      std::stable_sort(visible.begin(), visible.end(),
                       [&](int64_t i, int64_t j) { return sa[b][t][i] > sa[b][t][j]; });
      visible.resize(std::min<size_t>(visible.size(), o.top_k()));
      for (int64_t s : visible) r.selected[b][t][s] = true;
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> logits;
        double mx = neg_inf;
        for (int64_t s : visible) {
          double dot = 0;
          for (int64_t c = 0; c < hd; ++c) dot += qa[b][t][h * hd + c] * qa[b][s][D + h * hd + c];
          logits.push_back(dot / std::sqrt(static_cast<double>(hd)));
          mx = std::max(mx, logits.back());
        }
        double denom = 0;
        for (double l : logits) denom += std::exp(l - mx);
        for (size_t n = 0; n < visible.size(); ++n) {
          const double p = std::exp(logits[n] - mx) / denom;
          for (int64_t c = 0; c < hd; ++c) {
            heads[b][t][h * hd + c] += p * qa[b][visible[n]][2 * D + h * hd + c];
          }
        }
      }
    }
  }
  r.output = heads.matmul(d(m->proj->weight).t());
  return r;
}

TEST(DeepSeekSparseAttention, MatchesNaiveReimplementation) {
  for (bool causal : {true, false}) {
    torch::manual_seed(0);
    DeepSeekSparseAttention attn(small(3).causal(causal));
    attn->to(torch::kDouble);  // no near-ties between float roundings in the selection
    attn->eval();
    torch::Tensor x = torch::randn({2, 9, 32}, torch::kDouble);
    DeepSeekSparseOutput r = attn->forward_with_aux_sparse(x);
    NaiveDsa expected = naive_dsa(attn, x);
    EXPECT_LT(max_abs_diff(r.output, expected.output), 1e-10) << "causal " << causal;
    EXPECT_TRUE(torch::equal(r.selected, expected.selected)) << "causal " << causal;
    torch::Tensor finite = torch::isfinite(expected.scores);
    EXPECT_TRUE(torch::equal(torch::isfinite(r.index_scores), finite));
    EXPECT_LT(
        max_abs_diff(r.index_scores.masked_select(finite), expected.scores.masked_select(finite)),
        1e-10);
  }
}

// The fused path (gather kernel over the selected indices, taken by forward) equals the masked
// dense path (taken when the weights are requested), forward and backward.
TEST(DeepSeekSparseAttention, GatherPathMatchesMaskedDensePath) {
  // T = 1500 selects by several chunks of queries (narrowed to the visible keys when causal).
  for (int64_t T : {13, 1500}) {
    for (bool causal : {true, false}) {
      for (bool with_mask : {false, true}) {
        torch::manual_seed(1);
        DeepSeekSparseAttention attn(small(T > 100 ? 37 : 5).causal(causal).bias(true));
        torch::Tensor x0 = torch::randn({2, T, 32});
        torch::Tensor mask;
        if (with_mask) mask = torch::rand({2, T, T}) > 0.3;
        torch::Tensor grad_out = torch::randn({2, T, 32});
        auto run = [&](bool dense) {
          attn->zero_grad();
          torch::Tensor x = x0.clone().requires_grad_(true);
          torch::Tensor y = dense       ? attn->forward_with_aux_sparse(x, mask).output
                            : with_mask ? attn->forward(x, mask)
                                        : attn->forward(x);
          (y * grad_out).sum().backward();
          std::vector<torch::Tensor> grads{x.grad()};
          for (const auto& p : attn->parameters()) {
            grads.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
          }
          return std::make_pair(y.detach(), grads);
        };
        auto fused = run(false);
        auto dense = run(true);
        const std::string where = "T " + std::to_string(T) + std::string(" causal ") +
                                  (causal ? "1" : "0") + " mask " + (with_mask ? "1" : "0");
        EXPECT_LT(max_abs_diff(fused.first, dense.first), 1e-5) << where;
        ASSERT_EQ(fused.second.size(), dense.second.size());
        for (size_t i = 0; i < fused.second.size(); ++i) {
          // parameter gradients sum over B * T tokens: 1e-5 relative to their largest entry
          const double scale = std::max(1.0, dense.second[i].abs().max().item<double>());
          EXPECT_LT(max_abs_diff(fused.second[i], dense.second[i]) / scale, 1e-5)
              << where << " grad " << i;
        }
        {
          testing::EnvGuard env("ATTNKIT_BACKEND", "reference");
          torch::NoGradGuard no_grad;
          torch::Tensor ref = with_mask ? attn->forward(x0, mask) : attn->forward(x0);
          EXPECT_LT(max_abs_diff(fused.first, ref), 1e-5) << where;
        }
      }
    }
  }
}

TEST(DeepSeekSparseAttention, IndexerMatchesItsFormula) {
  torch::manual_seed(1);
  LightningIndexer indexer(LightningIndexerOptions(16).num_heads(2).head_dim(4));
  torch::Tensor x = torch::randn({1, 5, 16});
  torch::Tensor s = indexer(x);
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{1, 5, 5}));
  torch::NoGradGuard no_grad;
  torch::Tensor q = indexer->wq(x).view({1, 5, 2, 4});
  torch::Tensor k = indexer->wk(x);
  torch::Tensor w = indexer->ww(x);
  double expected = 0;
  for (int64_t h = 0; h < 2; ++h) {
    expected +=
        w[0][3][h].item<double>() * std::max(0.0, (q[0][3][h] * k[0][1]).sum().item<double>());
  }
  EXPECT_NEAR(s[0][3][1].item<double>(), expected, 1e-5);
}

TEST(DeepSeekSparseAttention, Shape) {
  torch::manual_seed(0);
  DeepSeekSparseAttention attn(DeepSeekSparseAttentionOptions(32, 4).top_k(8));
  torch::Tensor x = torch::randn({2, 20, 32});
  torch::Tensor y = attn(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

TEST(DeepSeekSparseAttention, TopKCountPerQuery) {
  torch::manual_seed(0);
  DeepSeekSparseAttention attn(small(3));
  torch::Tensor x = torch::randn({2, 12, 32});
  DeepSeekSparseOutput r = attn->forward_with_aux_sparse(x);
  ASSERT_EQ(r.selected.sizes(), (std::vector<int64_t>{2, 12, 12}));
  ASSERT_EQ(r.selected_indices.sizes(), (std::vector<int64_t>{2, 12, 3}));
  torch::Tensor count = r.selected.sum(-1);
  for (int64_t t = 0; t < 12; ++t) {
    EXPECT_EQ(count.select(1, t).min().item<int64_t>(), std::min<int64_t>(3, t + 1)) << t;
    EXPECT_EQ(count.select(1, t).max().item<int64_t>(), std::min<int64_t>(3, t + 1)) << t;
  }
  // never a future key; the indices say the same as the bool selection
  EXPECT_FALSE((r.selected & torch::ones({12, 12}, torch::kBool).triu(1)).any().item<bool>());
  torch::Tensor from_indices = torch::zeros({2, 12, 13}, torch::kBool)
                                   .scatter(-1, r.selected_indices.clamp_min(-1) + 1, true)
                                   .narrow(-1, 1, 12);
  EXPECT_TRUE(torch::equal(from_indices, r.selected));
  // the selected keys are the best-scored ones
  torch::Tensor s = r.index_scores.detach();
  torch::Tensor worst_kept = s.masked_fill(r.selected.logical_not(), INFINITY).amin(-1);
  torch::Tensor best_dropped = s.masked_fill(r.selected, -INFINITY).amax(-1);
  EXPECT_TRUE((worst_kept >= best_dropped).all().item<bool>());
  // and the attention weights live on the selection only
  EXPECT_FALSE(((r.attn_weights > 0) & r.selected.unsqueeze(1).logical_not()).any().item<bool>());
}

TEST(DeepSeekSparseAttention, DegradesToDenseCausalAttention) {
  torch::manual_seed(0);
  DeepSeekSparseAttention attn(small(1000));
  attn->eval();
  const int64_t B = 2, T = 10, H = 4, hd = 8;
  torch::Tensor x = torch::randn({B, T, 32});
  DeepSeekSparseOutput r = attn->forward_with_aux_sparse(x);
  torch::Tensor tril = torch::ones({T, T}, torch::kBool).tril().expand({B, T, T});
  EXPECT_TRUE(torch::equal(r.selected, tril));
  // the same weights as plain causal multi-head attention
  torch::NoGradGuard no_grad;
  torch::Tensor qkv = attn->qkv(x).view({B, T, 3, H, hd});
  torch::Tensor dense = testing::naive_attention(
      qkv.select(2, 0).transpose(1, 2), qkv.select(2, 1).transpose(1, 2),
      qkv.select(2, 2).transpose(1, 2), 1.0 / std::sqrt(8.0), /*causal=*/true);
  torch::Tensor expected =
      dense.transpose(1, 2).reshape({B, T, 32}).matmul(attn->proj->weight.to(torch::kDouble).t());
  EXPECT_LT(max_abs_diff(r.output, expected), 1e-5);
  // and sparser settings really differ from it
  DeepSeekSparseAttention sparse(small(2));
  testing::copy_parameters(*attn, *sparse);
  EXPECT_GT(max_abs_diff(sparse(x), expected), 1e-3);
}

TEST(DeepSeekSparseAttention, AuxLossTrainsOnlyTheIndexer) {
  torch::manual_seed(0);
  DeepSeekSparseAttention attn(small(4));
  torch::Tensor x = torch::randn({2, 10, 32});
  DeepSeekSparseOutput r = attn->forward_with_aux_sparse(x);
  torch::Tensor loss = dsa_index_aux_loss(r.index_scores, r.attn_weights);
  EXPECT_TRUE(torch::isfinite(loss).item<bool>());
  loss.backward();
  for (const auto& p : attn->indexer->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
  EXPECT_FALSE(attn->qkv->weight.grad().defined());
  EXPECT_FALSE(attn->proj->weight.grad().defined());

  // and the attention output does not train the indexer
  DeepSeekSparseAttention lm(small(4));
  lm(x).pow(2).sum().backward();
  EXPECT_TRUE(lm->qkv->weight.grad().defined());
  for (const auto& p : lm->indexer->named_parameters()) {
    EXPECT_FALSE(p.value().grad().defined()) << p.key();
  }
}

TEST(DeepSeekSparseAttention, DetachedIndexerKeepsTheAuxLossOffTheInput) {
  for (bool detach : {false, true}) {
    torch::manual_seed(0);
    DeepSeekSparseAttention attn(small(4).detach_index(detach));
    torch::Tensor x = torch::randn({1, 8, 32}, torch::requires_grad());
    DeepSeekSparseOutput r = attn->forward_with_aux_sparse(x);
    dsa_index_aux_loss(r.index_scores, r.attn_weights).backward();
    EXPECT_EQ(x.grad().defined(), !detach);
    EXPECT_TRUE(attn->indexer->wq->weight.grad().defined());
  }
}

TEST(DeepSeekSparseAttention, AuxLossMatchesItsFormula) {
  torch::manual_seed(3);
  const int64_t B = 2, H = 3, T = 5;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  torch::Tensor scores = torch::randn({B, T, T}, torch::kDouble);
  torch::Tensor future = torch::ones({T, T}, torch::kBool).triu(1);
  scores = scores.masked_fill(future, neg_inf);
  // a target with mass on masked (future) keys: attnhut would return inf here
  torch::Tensor attn_weights = torch::rand({B, H, T, T}, torch::kDouble);
  torch::Tensor loss = dsa_index_aux_loss(scores, attn_weights);
  ASSERT_TRUE(torch::isfinite(loss).item<bool>());
  double expected = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      double mass = 0, lse = 0, mx = neg_inf;
      std::vector<double> p(T, 0.0);
      for (int64_t s = 0; s <= t; ++s) {
        for (int64_t h = 0; h < H; ++h) p[s] += attn_weights[b][h][t][s].item<double>();
        mass += p[s];
        mx = std::max(mx, scores[b][t][s].item<double>());
      }
      for (int64_t s = 0; s <= t; ++s) lse += std::exp(scores[b][t][s].item<double>() - mx);
      lse = mx + std::log(lse);
      for (int64_t s = 0; s <= t; ++s) {
        expected -= p[s] / mass * (scores[b][t][s].item<double>() - lse);
      }
    }
  }
  EXPECT_NEAR(loss.item<double>(), expected / (B * T), 1e-10);

  // a fully masked query contributes 0 and no NaN gradient
  torch::Tensor s2 = scores.clone().requires_grad_(true);
  torch::Tensor masked_row = torch::zeros({B, T, T}, torch::kBool);
  masked_row.select(1, 0).fill_(true);
  torch::Tensor l2 = dsa_index_aux_loss(s2.masked_fill(masked_row, neg_inf), attn_weights);
  l2.backward();
  EXPECT_TRUE(torch::isfinite(l2).item<bool>());
  EXPECT_TRUE(torch::isfinite(s2.grad()).all().item<bool>());
}

TEST(DeepSeekSparseAttention, AttnMaskedKeysAreNeverSelected) {
  torch::manual_seed(0);
  DeepSeekSparseAttention attn(small(3));
  const int64_t T = 8;
  torch::Tensor x = torch::randn({2, T, 32});
  torch::Tensor keep = torch::rand({2, T, T}) > 0.3;
  keep.select(1, 4).fill_(false);  // query 4 sees nothing
  DeepSeekSparseOutput r = attn->forward_with_aux_sparse(x, keep);
  torch::Tensor causal = torch::ones({T, T}, torch::kBool).tril();
  EXPECT_FALSE((r.selected & (keep & causal).logical_not()).any().item<bool>());
  torch::Tensor expected_count = (keep & causal).sum(-1).clamp_max(3);
  EXPECT_TRUE(torch::equal(r.selected.sum(-1), expected_count));
  EXPECT_EQ(r.output.select(1, 4).abs().max().item<double>(), 0.0);
  // the same as forward(x, mask); additive -inf masks mean the same
  EXPECT_TRUE(testing::close(attn(x, keep), r.output));
  torch::Tensor additive = torch::zeros({2, T, T}).masked_fill(keep.logical_not(), -INFINITY);
  EXPECT_TRUE(testing::close(attn(x, additive), r.output));
  ATTNKIT_EXPECT_ERROR(attn(x, torch::ones({2, 4, T, T}, torch::kBool)),
                       HasSubstr("DeepSeekSparseAttention"), HasSubstr("attn_mask"));
}

TEST(DeepSeekSparseAttention, DecodeCachesKeysValuesAndIndexKeys) {
  torch::manual_seed(0);
  DeepSeekSparseAttention attn(small(3));
  attn->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 7, 32});
  DecodeState state = attn->init_state(2);
  torch::Tensor y = torch::cat({attn(x.narrow(1, 0, 6), state), attn(x.narrow(1, 6, 1), state)}, 1);
  EXPECT_LT(max_abs_diff(y, attn(x)), 1e-5);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"index_k", "k", "v"}));
  // per token: k and v (H * hd each) plus one indexer key (di), float32
  EXPECT_EQ(state.bytes(), 2 * 7 * (2 * 32 + 8) * 4);
  DeepSeekSparseAttention bidirectional(small(3).causal(false));
  EXPECT_FALSE(bidirectional->supports_decoding());
}

// Exact ties are common (ReLU zeros every head for many pairs). With all scores equal the
// earlier keys win, in the full forward and in every decoding step alike.
TEST(DeepSeekSparseAttention, TiesGoToEarlierKeysWhenDecodingToo) {
  torch::manual_seed(0);
  DeepSeekSparseAttention attn(small(3));
  attn->eval();
  torch::NoGradGuard no_grad;
  attn->indexer->ww->weight.zero_();  // every score is 0
  const int64_t T = 9;
  torch::Tensor x = torch::randn({2, T, 32});
  DeepSeekSparseOutput r = attn->forward_with_aux_sparse(x);
  torch::Tensor expected = torch::zeros({T, T}, torch::kBool);
  for (int64_t t = 0; t < T; ++t) expected[t].narrow(0, 0, std::min<int64_t>(3, t + 1)).fill_(true);
  EXPECT_TRUE(torch::equal(r.selected, expected.expand({2, T, T})));
  DecodeState state = attn->init_state(2);
  std::vector<torch::Tensor> parts;
  for (int64_t t = 0; t < T; ++t) parts.push_back(attn(x.narrow(1, t, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), r.output), 1e-5);
}

TEST(DeepSeekSparseAttention, ParametersAndPrint) {
  DeepSeekSparseAttention attn(small(5).bias(true).detach_index(true));
  std::vector<std::string> names;
  for (const auto& p : attn->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names,
            (std::vector<std::string>{"qkv.weight", "qkv.bias", "proj.weight", "proj.bias",
                                      "indexer.wq.weight", "indexer.wq.bias", "indexer.wk.weight",
                                      "indexer.wk.bias", "indexer.ww.weight", "indexer.ww.bias"}));
  EXPECT_EQ(attn->qkv->weight.sizes(), (std::vector<int64_t>{96, 32}));
  EXPECT_EQ(attn->indexer->wq->weight.sizes(), (std::vector<int64_t>{24, 32}));
  EXPECT_EQ(attn->indexer->wk->weight.sizes(), (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(attn->indexer->ww->weight.sizes(), (std::vector<int64_t>{3, 32}));
  std::ostringstream s;
  attn->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::DeepSeekSparseAttention(dim=32, num_heads=4, top_k=5, num_index_heads=3, "
            "index_head_dim=8, causal=true, bias=true, detach_index=true)");
  std::ostringstream si;
  attn->indexer->pretty_print(si);
  EXPECT_EQ(si.str(), "attnkit::LightningIndexer(dim=32, num_heads=3, head_dim=8, bias=true)");
  DeepSeekSparseAttentionOptions defaults(64, 2);
  EXPECT_EQ(defaults.top_k(), 64);
  EXPECT_EQ(defaults.num_index_heads(), 4);
  EXPECT_EQ(defaults.index_head_dim(), 64);
  EXPECT_TRUE(defaults.causal());
  EXPECT_FALSE(defaults.bias());
  EXPECT_FALSE(defaults.detach_index());
  // the clone is deep and computes the same
  auto copy = std::dynamic_pointer_cast<DeepSeekSparseAttentionImpl>(attn->clone());
  ASSERT_NE(copy, nullptr);
  torch::Tensor x = torch::randn({1, 6, 32});
  EXPECT_TRUE(torch::equal(copy->forward(x), attn(x)));
}

TEST(DeepSeekSparseAttention, BadConstructorArguments) {
  using Opt = DeepSeekSparseAttentionOptions;
  ATTNKIT_EXPECT_ERROR(DeepSeekSparseAttention(Opt(0, 4)), HasSubstr("DeepSeekSparseAttention"),
                       HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(DeepSeekSparseAttention(Opt(32, 0)),
                       HasSubstr("num_heads must be positive"));
  ATTNKIT_EXPECT_ERROR(DeepSeekSparseAttention(Opt(32, 5)),
                       HasSubstr("dim (32) must be divisible by num_heads (5)"));
  ATTNKIT_EXPECT_ERROR(DeepSeekSparseAttention(Opt(32, 4).top_k(0)),
                       HasSubstr("top_k must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(DeepSeekSparseAttention(Opt(32, 4).num_index_heads(-1)),
                       HasSubstr("num_index_heads must be positive, got -1"));
  ATTNKIT_EXPECT_ERROR(DeepSeekSparseAttention(Opt(32, 4).index_head_dim(0)),
                       HasSubstr("index_head_dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(LightningIndexer(LightningIndexerOptions(0)), HasSubstr("LightningIndexer"),
                       HasSubstr("dim must be positive"));
  ATTNKIT_EXPECT_ERROR(LightningIndexer(LightningIndexerOptions(8).num_heads(0)),
                       HasSubstr("num_heads must be positive"));
  ATTNKIT_EXPECT_ERROR(LightningIndexer(LightningIndexerOptions(8).head_dim(0)),
                       HasSubstr("head_dim must be positive"));
  ATTNKIT_EXPECT_ERROR(LightningIndexer(LightningIndexerOptions(8))(torch::randn({1, 3, 9})),
                       HasSubstr("LightningIndexer"), HasSubstr("dim (8)"));
  ATTNKIT_EXPECT_ERROR(dsa_index_aux_loss(torch::randn({2, 3}), torch::rand({2, 1, 3, 3})),
                       HasSubstr("dsa_index_aux_loss"), HasSubstr("[B, T, Tk]"));
  ATTNKIT_EXPECT_ERROR(dsa_index_aux_loss(torch::randn({2, 3, 3}), torch::rand({2, 1, 3, 4})),
                       HasSubstr("to match index_scores"));
}

}  // namespace
}  // namespace attnkit
