#include <attnkit/attention/compressed_sparse_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <string>

#include "support/contract.h"
#include "support/naive.h"
#include "support/tolerance.h"

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

constexpr double kInf = std::numeric_limits<double>::infinity();

CompressedSparseAttentionOptions small_options() {
  return CompressedSparseAttentionOptions(/*dim=*/32, /*num_heads=*/4)
      .compression_rate(2)
      .top_k(2)
      .window(3)
      .num_index_heads(2)
      .index_dim(5);
}

Attention contract_module(CompressedSparseAttentionOptions options) {
  return as_attention(CompressedSparseAttention(options));
}

ATTNKIT_CONTRACT_SUITE(
    CompressedSparseAttention,
    testing::with_aux_trained(ContractCase{"rate2_top2_window3",
                                           [] { return contract_module(small_options()); }, true,
                                           /*takes_mask=*/true},
                              {"idx_"}),
    testing::with_aux_trained(ContractCase{"groups2_kv6_qlora10_rate3",
                                           [] {
                                             return contract_module(small_options()
                                                                        .compression_rate(3)
                                                                        .top_k(1)
                                                                        .kv_dim(6)
                                                                        .q_lora_rank(10)
                                                                        .num_groups(2)
                                                                        .bias(true));
                                           },
                                           true, true},
                              {"idx_"}),
    testing::with_aux_trained(ContractCase{"partial_rope_last_interleaved",
                                           [] {
                                             return contract_module(small_options().kv_dim(8).rope(
                                                 RopeOptions()
                                                     .dim(4)
                                                     .channels(RopeChannels::kLast)
                                                     .style(RopeStyle::kInterleaved)));
                                           },
                                           true, true},
                              {"idx_"}),
    testing::with_aux_trained(
        ContractCase{"defaults_top_k_covers_all",
                     [] { return contract_module(CompressedSparseAttentionOptions(32, 2)); }, true,
                     true,
                     /*batch_size=*/1, /*seq_len=*/13},
        {"idx_"}));

// --- naive re-implementation of docs/catalog.md, "Compressed sparse attention", explicit
// loops in double

torch::Tensor D(const torch::Tensor& t) { return t.detach().to(torch::kDouble); }

torch::Tensor rope_at(const torch::Tensor& v, int64_t rope_dim, int64_t position) {
  return testing::naive_rope_half(v.view({1, 1, 1, v.size(0)}), rope_dim, 1e4, position).view({-1});
}

struct NaiveCsa {
  torch::Tensor output, index_scores, selected;
};

NaiveCsa naive_csa(CompressedSparseAttention& m, const torch::Tensor& x_in, int64_t rope_dim = 0) {
  const auto& o = m->options;
  const int64_t B = x_in.size(0), T = x_in.size(1), H = o.num_heads(), c = o.kv_dim();
  const int64_t r = o.compression_rate(), W = o.window(), G = o.num_groups();
  const int64_t Hi = o.num_index_heads(), di = o.index_dim(), nb = (T + r - 1) / r;
  torch::Tensor x = D(x_in);
  auto lin = [&](const torch::nn::Linear& l, const torch::Tensor& in) {
    torch::Tensor y = in.matmul(D(l->weight).t());
    return l->bias.defined() ? y + D(l->bias) : y;
  };
  torch::Tensor kva = lin(m->kv_a, x), kvb = lin(m->kv_b, x), za = lin(m->z_a, x),
                zb = lin(m->z_b, x);
  torch::Tensor ba = D(m->bias_a), bb = D(m->bias_b);
  // overlapped pooling: entry e over its own block (a) and the previous block (b), 2r positions
  torch::Tensor comp = torch::zeros({B, nb, c}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = 0; e < nb; ++e)
      for (int64_t ch = 0; ch < c; ++ch) {
        std::vector<double> gate, value;
        for (int64_t i = 0; i < r && e * r + i < T; ++i) {
          gate.push_back(za[b][e * r + i][ch].item<double>() + ba[i][ch].item<double>());
          value.push_back(kva[b][e * r + i][ch].item<double>());
        }
        for (int64_t i = 0; i < r && e > 0; ++i) {
          gate.push_back(zb[b][(e - 1) * r + i][ch].item<double>() + bb[i][ch].item<double>());
          value.push_back(kvb[b][(e - 1) * r + i][ch].item<double>());
        }
        const double mx = *std::max_element(gate.begin(), gate.end());
        double den = 0, num = 0;
        for (size_t j = 0; j < gate.size(); ++j) {
          den += std::exp(gate[j] - mx);
          num += std::exp(gate[j] - mx) * value[j];
        }
        comp[b][e][ch] = num / den;
      }
  torch::Tensor kvs = testing::naive_rms_norm(torch::cat({comp, kva}, 1), D(m->kv_norm), 1e-6);
  torch::Tensor c_q = lin(m->q_down, x);
  torch::Tensor q =
      testing::naive_rms_norm(lin(m->q_up, c_q).view({B, T, H, c}), D(m->q_norm), 1e-6);
  if (rope_dim > 0) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t e = 0; e < nb; ++e) kvs[b][e] = rope_at(kvs[b][e], rope_dim, e * r);
      for (int64_t s = 0; s < T; ++s) kvs[b][nb + s] = rope_at(kvs[b][nb + s], rope_dim, s);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) q[b][t][h] = rope_at(q[b][t][h], rope_dim, t);
    }
  }
  // lightning indexer over the (un-normalised) entries, then top-k among the visible ones
  torch::Tensor qi = lin(m->idx_q, c_q).view({B, T, Hi, di}), ki = lin(m->idx_k, comp),
                wi = lin(m->idx_w, x);
  NaiveCsa out;
  out.index_scores = torch::full({B, T, nb}, -kInf, torch::kDouble);
  out.selected = torch::zeros({B, T, nb}, torch::kBool);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int64_t> visible;
      for (int64_t e = 0; e < nb; ++e) {
        if ((e + 1) * r > t) continue;
        double score = 0;
        for (int64_t h = 0; h < Hi; ++h)
          score +=
              wi[b][t][h].item<double>() * std::max(0.0, qi[b][t][h].dot(ki[b][e]).item<double>());
        out.index_scores[b][t][e] = score;
        visible.push_back(e);
      }
      std::stable_sort(visible.begin(), visible.end(), [&](int64_t a, int64_t e) {
        return out.index_scores[b][t][a].item<double>() > out.index_scores[b][t][e].item<double>();
      });
      for (size_t i = 0; i < visible.size() && int64_t(i) < o.top_k(); ++i)
        out.selected[b][t][visible[i]] = true;
    }
  // shared-KV attention over selected entries + raw window, with the sink
  torch::Tensor sink = D(m->sink);
  torch::Tensor heads = torch::zeros({B, T, H, c}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> logit(nb + T, -kInf);
        for (int64_t j = 0; j < nb + T; ++j) {
          const bool keep =
              j < nb ? out.selected[b][t][j].item<bool>() : (j - nb <= t && j - nb > t - W);
          if (keep) logit[j] = q[b][t][h].dot(kvs[b][j]).item<double>() / std::sqrt(double(c));
        }
        double mx = sink[h].item<double>();
        for (double l : logit) mx = std::max(mx, l);
        if (mx == -kInf) continue;
        double den = std::exp(sink[h].item<double>() - mx);
        for (double l : logit) den += std::exp(l - mx);
        for (int64_t j = 0; j < nb + T; ++j)
          if (logit[j] > -kInf) heads[b][t][h] += std::exp(logit[j] - mx) / den * kvs[b][j];
        if (rope_dim > 0) heads[b][t][h] = rope_at(heads[b][t][h].clone(), rope_dim, -t);
      }
  const int64_t per = (H / G) * c;
  torch::Tensor flat = heads.reshape({B, T, H * c});
  std::vector<torch::Tensor> groups;
  for (int64_t g = 0; g < G; ++g)
    groups.push_back(flat.narrow(2, g * per, per).matmul(D(m->proj->w[g])));
  out.output = lin(m->proj->out, torch::cat(groups, 2));
  return out;
}

void randomize(CompressedSparseAttention& m) {
  torch::NoGradGuard no_grad;
  m->bias_a.normal_(0, 1);
  m->bias_b.normal_(0, 1);
  m->q_norm.uniform_(0.5, 1.5);
  m->kv_norm.uniform_(0.5, 1.5);
  m->sink.normal_(0, 1);
}

void expect_matches_naive(CompressedSparseAttention& m, const torch::Tensor& x, int64_t rope_dim) {
  CompressedSparseOutput y = m->forward_with_aux_sparse(x);
  NaiveCsa expected = naive_csa(m, x, rope_dim);
  EXPECT_LT(max_abs_diff(y.output, expected.output), 1e-5);
  EXPECT_TRUE(torch::equal(y.selected, expected.selected));
  torch::Tensor finite = torch::isfinite(expected.index_scores);
  EXPECT_TRUE(torch::equal(torch::isfinite(y.index_scores), finite));
  EXPECT_LT(max_abs_diff(y.index_scores.masked_select(finite),
                         expected.index_scores.masked_select(finite)),
            1e-4);
}

TEST(CompressedSparseAttention, MatchesNaiveReimplementation) {
  torch::manual_seed(0);
  for (auto options : {small_options(), small_options().compression_rate(3).top_k(1).num_groups(2),
                       small_options().top_k(100).window(1).kv_dim(5).bias(true)}) {
    CompressedSparseAttention m(options);
    randomize(m);
    expect_matches_naive(m, torch::randn({2, 13, 32}), 0);
  }
}

TEST(CompressedSparseAttention, PartialRopeMatchesNaiveReimplementation) {
  torch::manual_seed(1);
  CompressedSparseAttention m(small_options().kv_dim(6).rope(
      RopeOptions().dim(4).style(RopeStyle::kHalf).channels(RopeChannels::kFirst)));
  randomize(m);
  expect_matches_naive(m, torch::randn({2, 11, 32}), 4);
}

// attnhut test_csa_shape
TEST(CompressedSparseAttention, UpstreamShape) {
  torch::manual_seed(0);
  CompressedSparseAttention m(
      CompressedSparseAttentionOptions(32, 4).compression_rate(4).top_k(2).window(8));
  torch::Tensor y = m(torch::randn({2, 20, 32}));
  EXPECT_EQ(y.sizes().vec(), (std::vector<int64_t>{2, 20, 32}));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

// attnhut test_csa_causal (conftest.assert_causal: perturb the last token by +5, t = 16)
TEST(CompressedSparseAttention, UpstreamCausal) {
  torch::manual_seed(0);
  CompressedSparseAttention m(
      CompressedSparseAttentionOptions(32, 4).compression_rate(4).top_k(2).window(8));
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 16, 32});
  torch::Tensor x2 = x.clone();
  x2.narrow(1, 15, 1).add_(5.0);
  torch::Tensor y = m(x), y2 = m(x2);
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 15), y2.narrow(1, 0, 15), 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(y.narrow(1, 15, 1), y2.narrow(1, 15, 1), 1e-4, 1e-4));
}

// attnhut test_csa_selects_at_most_top_k, sharpened: exactly min(top_k, visible) per query
TEST(CompressedSparseAttention, UpstreamSelectsAtMostTopK) {
  torch::manual_seed(0);
  CompressedSparseAttention m(
      CompressedSparseAttentionOptions(32, 4).compression_rate(4).top_k(2).window(8));
  CompressedSparseOutput out = m->forward_with_aux_sparse(torch::randn({1, 40, 32}));
  ASSERT_EQ(out.selected.sizes().vec(), (std::vector<int64_t>{1, 40, 10}));
  ASSERT_EQ(out.index_scores.sizes().vec(), (std::vector<int64_t>{1, 40, 10}));
  EXPECT_LE(out.selected.sum(-1).max().item<int64_t>(), 2);
  for (int64_t t = 0; t < 40; ++t) {
    const int64_t visible = t / 4;
    EXPECT_EQ(out.selected[0][t].sum().item<int64_t>(), std::min<int64_t>(2, visible)) << t;
    for (int64_t e = 0; e < 10; ++e) {
      const bool is_visible = (e + 1) * 4 <= t;
      EXPECT_EQ(std::isfinite(out.index_scores[0][t][e].item<double>()), is_visible)
          << t << " " << e;
      if (!is_visible) {
        EXPECT_FALSE(out.selected[0][t][e].item<bool>()) << t << " " << e;
      }
    }
  }
  // the selected entries are the best-scored visible ones
  torch::Tensor min_selected =
      out.index_scores.masked_fill(out.selected.logical_not(), kInf).amin(-1);
  torch::Tensor max_unselected = out.index_scores.masked_fill(out.selected, -kInf).amax(-1);
  EXPECT_TRUE((min_selected >= max_unselected).all().item<bool>());
}

TEST(CompressedSparseAttention, AttentionWeightsOnlyOnSelectedEntriesAndWindow) {
  torch::manual_seed(2);
  CompressedSparseAttention m(small_options());
  const int64_t T = 12, nb = 6, W = 3;
  CompressedSparseOutput out = m->forward_with_aux_sparse(torch::randn({2, T, 32}));
  ASSERT_EQ(out.attn_weights.sizes().vec(), (std::vector<int64_t>{2, 4, T, nb + T}));
  torch::Tensor seen = (out.attn_weights > 0).all(1);  // [B, T, nb + T], same for every head
  EXPECT_TRUE(torch::equal(seen.narrow(2, 0, nb), out.selected));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < T; ++s)
      EXPECT_EQ(seen.select(1, t).select(1, nb + s).all().item<bool>(), s <= t && s > t - W);
  EXPECT_TRUE(torch::equal(m->forward_with_aux(torch::zeros({1, 5, 32})).output,
                           m(torch::zeros({1, 5, 32}))));
}

TEST(CompressedSparseAttention, RowsThatSeeNothingGiveZeros) {
  torch::manual_seed(5);
  // window 0: queries before the first complete block (t < r) select and see nothing
  CompressedSparseAttention m(small_options().compression_rate(3).window(0));
  for (double sink_value : {0.0, -kInf}) {
    {
      torch::NoGradGuard no_grad;
      m->sink.fill_(sink_value);
    }
    torch::Tensor x = torch::randn({2, 8, 32}, torch::requires_grad());
    CompressedSparseOutput out = m->forward_with_aux_sparse(x);
    ASSERT_TRUE(torch::isfinite(out.output).all().item<bool>()) << "sink " << sink_value;
    EXPECT_EQ(out.output.narrow(1, 0, 3).abs().max().item<double>(), 0.0) << "sink " << sink_value;
    EXPECT_GT(out.output.narrow(1, 3, 5).abs().min().item<double>(), 0.0) << "sink " << sink_value;
    EXPECT_EQ(out.attn_weights.narrow(2, 0, 3).abs().max().item<double>(), 0.0);
    out.output.sum().backward();
    EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>()) << "sink " << sink_value;
  }
}

TEST(CompressedSparseAttention, IndexerGetsNoGradientFromTheOutput) {
  torch::manual_seed(3);
  CompressedSparseAttention m(small_options());
  torch::Tensor x = torch::randn({2, 11, 32});
  (m(x) * torch::randn({2, 11, 32})).sum().backward();
  for (const auto& p : m->named_parameters()) {
    const bool indexer = p.key().rfind("idx_", 0) == 0;
    EXPECT_EQ(p.value().grad().defined(), !indexer) << p.key();
    if (!indexer) {
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    }
  }
  // the scores themselves are differentiable, for an auxiliary loss
  CompressedSparseOutput out = m->forward_with_aux_sparse(x);
  out.index_scores.masked_select(out.selected).sum().backward();
  EXPECT_GT(m->idx_q->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(m->idx_k->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(m->idx_w->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(CompressedSparseAttention, DecodingWrapsTheRingAndMatchesFullForward) {
  for (const char* backend : {"fused", "reference"}) {
    SCOPED_TRACE(backend);
    testing::EnvGuard guard("ATTNKIT_BACKEND", backend);
    torch::manual_seed(4);
    for (auto options :
         {small_options().compression_rate(3).window(5),
          small_options().kv_dim(6).rope(RopeOptions().dim(4).channels(RopeChannels::kLast)),
          small_options().compression_rate(4).top_k(1).window(0)}) {
      CompressedSparseAttention m(options);
      randomize(m);
      torch::NoGradGuard no_grad;
      torch::Tensor x = torch::randn({2, 23, 32});
      torch::Tensor full = m(x);
      DecodeState state = m->init_state(2);
      std::vector<torch::Tensor> parts;
      int64_t t = 0;
      for (int64_t len : {2, 7, 1, 1, 4, 8}) {
        parts.push_back(m->forward(x.narrow(1, t, len), state));
        t += len;
      }
      EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), 1e-5) << options.window();
      DecodeState single = m->init_state(2);
      parts.clear();
      for (int64_t i = 0; i < 23; ++i) parts.push_back(m->forward(x.narrow(1, i, 1), single));
      EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), 1e-5) << options.window();
    }
  }
}

// --- the fused (gather kernel) path against the masked dense reference

// Output and the gradient of every parameter and of x, under ATTNKIT_BACKEND=backend.
struct Run {
  torch::Tensor output, x_grad;
  std::map<std::string, torch::Tensor> grads;
};

Run run_backend(CompressedSparseAttention& m,
                const torch::Tensor& x_in,
                const torch::Tensor& mask,
                const torch::Tensor& dout,
                const char* backend) {
  testing::EnvGuard guard("ATTNKIT_BACKEND", backend);
  m->zero_grad();
  Run run;
  torch::Tensor x = x_in.detach().clone().requires_grad_(true);
  run.output = mask.defined() ? m(x, mask) : m(x);
  (run.output * dout).sum().backward();
  run.x_grad = x.grad();
  for (const auto& p : m->named_parameters()) run.grads[p.key()] = p.value().grad();
  return run;
}

void expect_fused_equals_reference(CompressedSparseAttention& m,
                                   const torch::Tensor& x,
                                   const torch::Tensor& mask = {}) {
  torch::Tensor dout = torch::randn(x.sizes());
  Run expected = run_backend(m, x, mask, dout, "reference");
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    Run got = run_backend(m, x, mask, dout, "fused");
    EXPECT_LT(max_abs_diff(got.output, expected.output), 1e-5);
    EXPECT_LT(max_abs_diff(got.x_grad, expected.x_grad), 1e-5);
    for (const auto& [name, grad] : expected.grads) {
      // the indexer learns only from its auxiliary loss: no gradient on either path
      ASSERT_EQ(got.grads[name].defined(), grad.defined()) << name;
      if (grad.defined()) {
        EXPECT_LT(max_abs_diff(got.grads[name], grad), 1e-5) << name;
      }
    }
  }
}

TEST(CompressedSparseAttention, FusedPathEqualsMaskedReference) {
  torch::manual_seed(11);
  const int64_t T = 29;
  for (auto options :
       {small_options(), small_options().compression_rate(3).top_k(1).num_groups(2).bias(true),
        // top_k >= number of entries: every visible entry is selected
        small_options().compression_rate(3).top_k(100).window(4),
        // no raw window: the first queries see nothing but the sink
        small_options().compression_rate(4).window(0),
        // a window longer than the sequence
        small_options().compression_rate(3).window(40),
        small_options().kv_dim(8).rope(
            RopeOptions().dim(4).channels(RopeChannels::kLast).style(RopeStyle::kInterleaved))}) {
    SCOPED_TRACE("top_k " + std::to_string(options.top_k()) + ", window " +
                 std::to_string(options.window()));
    CompressedSparseAttention m(options);
    randomize(m);
    torch::Tensor x = torch::randn({2, T, 32});
    expect_fused_equals_reference(m, x);
    // a causal keep mask leaves everything as it is; a random one narrows it further
    torch::Tensor causal = torch::ones({T, T}, torch::kBool).tril();
    expect_fused_equals_reference(m, x, causal);
    expect_fused_equals_reference(m, x, torch::rand({2, 1, T, T}) < 0.85);
  }
}

// With idx_w = 0 every visible entry scores 0: the selection is the earliest top_k visible
// entries, on both paths and when decoding.
TEST(CompressedSparseAttention, TiesGoToTheEarlierEntry) {
  torch::manual_seed(17);
  CompressedSparseAttention m(small_options().compression_rate(2).top_k(3));
  randomize(m);
  {
    torch::NoGradGuard no_grad;
    m->idx_w->weight.zero_();
  }
  const int64_t T = 19, r = 2, nb = 10;
  torch::Tensor x = torch::randn({2, T, 32});
  CompressedSparseOutput out = m->forward_with_aux_sparse(x);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < nb; ++e)
      EXPECT_EQ(out.selected[1][t][e].item<bool>(), (e + 1) * r <= t && e < 3) << t << " " << e;
  expect_fused_equals_reference(m, x);
  torch::NoGradGuard no_grad;
  DecodeState state = m->init_state(2);
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < T; ++i) parts.push_back(m->forward(x.narrow(1, i, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), m(x)), 1e-5);
}

TEST(CompressedSparseAttention, FusedPathRunsBFloat16) {
  torch::manual_seed(12);
  CompressedSparseAttention m(small_options());
  randomize(m);
  torch::Tensor x = torch::randn({2, 21, 32});
  torch::Tensor expected;
  {
    testing::EnvGuard guard("ATTNKIT_BACKEND", "reference");
    expected = m(x);
  }
  m->to(torch::kBFloat16);
  torch::Tensor got = m(x.to(torch::kBFloat16));
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  EXPECT_LT(max_abs_diff(got.to(torch::kFloat), expected), 5e-2);
}

// --- attn_mask

TEST(CompressedSparseAttention, CausalMaskChangesNothing) {
  torch::manual_seed(13);
  CompressedSparseAttention m(small_options().compression_rate(3));
  randomize(m);
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 17, 32});
  EXPECT_TRUE(testing::close(m(x, torch::ones({17, 17}, torch::kBool).tril()), m(x)));
}

TEST(CompressedSparseAttention, EntryVisibleOnlyWhenEveryPooledTokenIsKept) {
  torch::manual_seed(14);
  CompressedSparseAttention m(small_options().compression_rate(2).top_k(100));  // every visible
  const int64_t T = 14, r = 2, nb = 7;
  torch::Tensor keep = torch::ones({T, T}, torch::kBool);
  keep[11][5] = false;  // query 11 may not see token 5: pooled by entries 2 (own) and 3 (prev)
  CompressedSparseOutput out = m->forward_with_aux_sparse(torch::randn({1, T, 32}), keep);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < nb; ++e) {
      const bool expected = (e + 1) * r <= t && !(t == 11 && (e == 2 || e == 3));
      EXPECT_EQ(out.selected[0][t][e].item<bool>(), expected) << t << " " << e;
    }
}

// Perturbing tokens a query may not see changes nothing at that query, on both paths.
TEST(CompressedSparseAttention, MaskedKeysHaveNoInfluence) {
  const int64_t T = 24;
  for (const char* backend : {"fused", "reference"}) {
    SCOPED_TRACE(backend);
    testing::EnvGuard guard("ATTNKIT_BACKEND", backend);
    torch::manual_seed(15);
    CompressedSparseAttention m(small_options().compression_rate(3).top_k(3).window(6));
    randomize(m);
    torch::NoGradGuard no_grad;
    // queries 16.. may not see tokens 9..13 (nor, then, the entries pooling them)
    torch::Tensor keep = torch::ones({2, T, T}, torch::kBool);
    keep.narrow(1, 16, T - 16).narrow(2, 9, 5).fill_(false);
    torch::Tensor x = torch::randn({2, T, 32});
    torch::Tensor x2 = x.clone();
    x2.narrow(1, 9, 5).add_(torch::randn({2, 5, 32}) * 3.0);
    torch::Tensor y = m(x, keep), y2 = m(x2, keep);
    EXPECT_TRUE(testing::close(y.narrow(1, 16, T - 16), y2.narrow(1, 16, T - 16)));
    // the same perturbation does reach the queries that may see those tokens
    EXPECT_GT(max_abs_diff(y.narrow(1, 14, 2), y2.narrow(1, 14, 2)), 1e-3);
    EXPECT_GT(max_abs_diff(m(x).narrow(1, 16, T - 16), m(x2).narrow(1, 16, T - 16)), 1e-3);
  }
}

TEST(CompressedSparseAttention, MaskErrors) {
  CompressedSparseAttention m(small_options());
  torch::Tensor x = torch::randn({2, 6, 32});
  ATTNKIT_EXPECT_ERROR(m(x, torch::zeros({6, 6})), HasSubstr("CompressedSparseAttention"),
                       HasSubstr("expected a bool attn_mask"));
  ATTNKIT_EXPECT_ERROR(m(x, torch::ones({2, 4, 6, 6}, torch::kBool)),
                       HasSubstr("CompressedSparseAttention"), HasSubstr("attn_mask"));
}

TEST(CompressedSparseAttention, DecodeStateHoldsEntriesIndexKeysRingAndBlocks) {
  CompressedSparseAttention m(small_options().compression_rate(4).window(5));  // c 8, di 5
  torch::NoGradGuard no_grad;
  const int64_t c = 8, di = 5, B = 2, r = 4;
  DecodeState state = m->init_state(B);
  m->forward(torch::randn({B, 3, 32}), state);  // no entry, ring 3, 3 pending rows of 4c
  EXPECT_EQ(state.bytes(), B * 4 * (3 * c + 3 * 4 * c));
  m->forward(torch::randn({B, 6, 32}), state);  // 9: 2 entries, ring 5, 1 pending, prev block
  EXPECT_EQ(state.get("entries").size(1), 2);
  EXPECT_EQ(state.get("index_keys").size(1), 2);
  EXPECT_EQ(state.bytes(), B * 4 * (2 * (c + di) + 5 * c + 1 * 4 * c + r * 2 * c));
  EXPECT_EQ(state.names(), (std::vector<std::string>{"entries", "index_keys", "pending",
                                                     "prev_block", "window_kv"}));
}

TEST(CompressedSparseAttention, ParameterNamesFollowAttnhut) {
  CompressedSparseAttention m(CompressedSparseAttentionOptions(32, 4).num_groups(2));  // c 8, r 4
  std::map<std::string, std::vector<int64_t>> expected = {{"kv_a.weight", {8, 32}},
                                                          {"kv_b.weight", {8, 32}},
                                                          {"z_a.weight", {8, 32}},
                                                          {"z_b.weight", {8, 32}},
                                                          {"bias_a", {4, 8}},
                                                          {"bias_b", {4, 8}},
                                                          {"q_down.weight", {16, 32}},
                                                          {"q_up.weight", {32, 16}},
                                                          {"q_norm", {8}},
                                                          {"kv_norm", {8}},
                                                          {"sink", {4}},
                                                          {"idx_q.weight", {256, 16}},
                                                          {"idx_k.weight", {64, 8}},
                                                          {"idx_w.weight", {4, 32}},
                                                          {"proj.w", {2, 16, 8}},
                                                          {"proj.out.weight", {32, 16}}};
  auto params = m->named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
}

TEST(CompressedSparseAttention, DefaultsAndPrettyPrint) {
  CompressedSparseAttention m(64, 4);
  EXPECT_EQ(m->options.compression_rate(), 4);
  EXPECT_EQ(m->options.top_k(), 16);
  EXPECT_EQ(m->options.num_index_heads(), 4);
  EXPECT_EQ(m->options.index_dim(), 64);
  EXPECT_EQ(m->options.kv_dim(), 16);
  EXPECT_EQ(m->options.q_lora_rank(), 32);
  EXPECT_EQ(m->options.num_groups(), 4);
  std::ostringstream s;
  m->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::CompressedSparseAttention(dim=64, num_heads=4, compression_rate=4, top_k=16, "
            "kv_dim=16, q_lora_rank=32, num_index_heads=4, index_dim=64, num_groups=4, window=64, "
            "bias=false, norm_eps=1e-06, rope=none)");
}

TEST(CompressedSparseAttention, ErrorsNameTheArgument) {
  using O = CompressedSparseAttentionOptions;
  auto make = [](O o) { CompressedSparseAttention m(o); };
  ATTNKIT_EXPECT_ERROR(make(O(-1, 4)), HasSubstr("CompressedSparseAttention"),
                       HasSubstr("dim must be positive, got -1"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 0)), HasSubstr("num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).compression_rate(-2)),
                       HasSubstr("compression_rate must be positive, got -2"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).top_k(0)), HasSubstr("top_k must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).num_index_heads(0)),
                       HasSubstr("num_index_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).index_dim(0)), HasSubstr("index_dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).window(-5)), HasSubstr("window must be >= 0, got -5"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).num_groups(3)),
                       HasSubstr("num_heads (4) must be divisible by num_groups (3)"));
  ATTNKIT_EXPECT_ERROR(make(O(30, 4)), HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).kv_dim(-1)), HasSubstr("kv_dim must be >= 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).q_lora_rank(-1)), HasSubstr("q_lora_rank must be >= 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).norm_eps(-1.0)), HasSubstr("norm_eps must be >= 0"));
  ATTNKIT_EXPECT_ERROR(make(O(32, 4).rope(RopeOptions().dim(5))),
                       HasSubstr("CompressedSparseAttention"),
                       HasSubstr("rope dim must be even, got 5"));
}

}  // namespace
}  // namespace attnkit
