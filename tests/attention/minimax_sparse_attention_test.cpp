#include <attnkit/attention/minimax_sparse_attention.h>

#include <attnkit/attention/grouped_query_attention.h>

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

Attention contract_module(MiniMaxSparseAttentionOptions options) {
  return as_attention(MiniMaxSparseAttention(options));
}

MiniMaxSparseAttentionOptions small(int64_t top_k) {
  return MiniMaxSparseAttentionOptions(/*dim=*/32, /*num_heads=*/4, /*num_kv_groups=*/2)
      .block_size(4)
      .top_k(top_k);
}

// attnhut 0.4.0 through flags
MiniMaxSparseAttentionOptions v04(int64_t top_k) {
  return small(top_k).qk_norm(false).detach_index(false).partial_rope(false);
}

ATTNKIT_CONTRACT_SUITE(
    MiniMaxSparseAttention,
    testing::with_aux_trained(ContractCase{"v05_top1", [] { return contract_module(small(1)); },
                                           true},
                              {"idx_"}),
    testing::with_aux_trained(
        ContractCase{"v05_top2_partial_rope",
                     [] { return contract_module(small(2).index_dim(12).rope_dim(4)); }, true},
        {"idx_"}),
    testing::with_aux_trained(
        ContractCase{"v04_flags", [] { return contract_module(v04(2).index_dim(6)); }, true},
        {"idx_"}),
    testing::with_aux_trained(
        ContractCase{"all_blocks_no_rope",
                     [] { return contract_module(small(1000).use_rope(false)); }, true},
        {"idx_"}),
    testing::with_aux_trained(ContractCase{"no_forced_block_groups4",
                                           [] {
                                             return contract_module(
                                                 MiniMaxSparseAttentionOptions(32, 4, 4)
                                                     .block_size(3)
                                                     .top_k(2)
                                                     .force_current_block(false));
                                           },
                                           true},
                              {"idx_"}),
    testing::with_aux_trained(
        ContractCase{"non_causal_bias",
                     [] { return contract_module(small(2).causal(false).bias(true)); }, false},
        {"idx_"}));

// --- a loop re-implementation of docs/catalog.md, "MiniMax sparse attention", in double

struct NaiveMsa {
  torch::Tensor output;  // [B, T, D]
  torch::Tensor keep;    // bool [B, Gk, T, T]
  torch::Tensor blocks;  // bool [B, Gk, T, nb]
};

NaiveMsa naive_msa(const MiniMaxSparseAttention& m, const torch::Tensor& x_in) {
  torch::NoGradGuard no_grad;
  const auto& o = m->options;
  const int64_t B = x_in.size(0), T = x_in.size(1), D = o.dim(), H = o.num_heads();
  const int64_t Gk = o.num_kv_groups(), G = H / Gk, hd = D / H, di = o.index_dim();
  const int64_t bs = o.block_size(), nb = (T + bs - 1) / bs;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  torch::Tensor x = x_in.to(torch::kDouble);
  auto lin = [&](const torch::nn::Linear& l) {
    torch::Tensor y = x.matmul(l->weight.to(torch::kDouble).t());
    return l->bias.defined() ? y + l->bias.to(torch::kDouble) : y;
  };
  torch::Tensor q = lin(m->q).view({B, T, H, hd}), k = lin(m->k).view({B, T, Gk, hd});
  torch::Tensor v = lin(m->v).view({B, T, Gk, hd}).contiguous();
  torch::Tensor qi = lin(m->idx_q).view({B, T, Gk, di}), ki = lin(m->idx_k).view({B, T, 1, di});
  if (o.qk_norm()) {
    q = testing::naive_rms_norm(q, m->q_norm, o.qk_norm_eps());
    k = testing::naive_rms_norm(k, m->k_norm, o.qk_norm_eps());
    qi = testing::naive_rms_norm(qi, m->idx_q_norm, o.qk_norm_eps());
    ki = testing::naive_rms_norm(ki, m->idx_k_norm, o.qk_norm_eps());
  }
  if (o.use_rope()) {
    q = testing::naive_rope_half(q, o.partial_rope() ? o.rope_dim() : hd, o.rope_theta());
    k = testing::naive_rope_half(k, o.partial_rope() ? o.rope_dim() : hd, o.rope_theta());
    qi = testing::naive_rope_half(qi, o.partial_rope() ? o.rope_dim() : di, o.rope_theta());
    ki = testing::naive_rope_half(ki, o.partial_rope() ? o.rope_dim() : di, o.rope_theta());
  }
  q = q.contiguous();
  k = k.contiguous();
  qi = qi.contiguous();
  ki = ki.contiguous();
  auto qa = q.accessor<double, 4>(), ka = k.accessor<double, 4>(), va = v.accessor<double, 4>();
  auto qia = qi.accessor<double, 4>(), kia = ki.accessor<double, 4>();

  NaiveMsa r;
  r.keep = torch::zeros({B, Gk, T, T}, torch::kBool);
  r.blocks = torch::zeros({B, Gk, T, nb}, torch::kBool);
  auto blocks = r.blocks.accessor<bool, 4>();
  auto keep = r.keep.accessor<bool, 4>();
  torch::Tensor heads = torch::zeros({B, T, H * hd}, torch::kDouble);
  auto out = heads.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < Gk; ++g) {
      for (int64_t t = 0; t < T; ++t) {
        auto visible = [&](int64_t s) { return !o.causal() || s <= t; };
        std::vector<double> block_score(nb, neg_inf);
        for (int64_t s = 0; s < T; ++s) {
          if (!visible(s)) continue;
          double dot = 0;
          for (int64_t c = 0; c < di; ++c) dot += qia[b][t][g][c] * kia[b][s][0][c];
          block_score[s / bs] = std::max(block_score[s / bs], dot / std::sqrt(double(di)));
        }
        std::vector<int64_t> order(nb);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t i, int64_t j) { return block_score[i] > block_score[j]; });
        std::vector<bool> kept(nb, false);
        for (int64_t n = 0; n < std::max<int64_t>(1, std::min(o.top_k(), nb)); ++n) {
          kept[order[n]] = true;
        }
        for (int64_t j = 0; j < nb; ++j) {
          if (o.causal() && j * bs > t) kept[j] = false;
        }
        if (o.force_current_block()) kept[std::min(t / bs, nb - 1)] = true;
        for (int64_t j = 0; j < nb; ++j) blocks[b][g][t][j] = kept[j];
        for (int64_t s = 0; s < T; ++s) keep[b][g][t][s] = kept[s / bs] && visible(s);
        for (int64_t h = g * G; h < (g + 1) * G; ++h) {
          std::vector<double> p(T, 0.0);
          double mx = neg_inf, denom = 0;
          for (int64_t s = 0; s < T; ++s) {
            if (!keep[b][g][t][s]) continue;
            double dot = 0;
            for (int64_t c = 0; c < hd; ++c) dot += qa[b][t][h][c] * ka[b][s][g][c];
            p[s] = dot / std::sqrt(double(hd));
            mx = std::max(mx, p[s]);
          }
          for (int64_t s = 0; s < T; ++s) {
            if (keep[b][g][t][s]) denom += std::exp(p[s] - mx);
          }
          for (int64_t s = 0; s < T; ++s) {
            if (!keep[b][g][t][s]) continue;
            const double w = std::exp(p[s] - mx) / denom;
            for (int64_t c = 0; c < hd; ++c) out[b][t][h * hd + c] += w * va[b][s][g][c];
          }
        }
      }
    }
  }
  torch::Tensor y = heads.matmul(m->proj->weight.to(torch::kDouble).t());
  r.output = m->proj->bias.defined() ? y + m->proj->bias.to(torch::kDouble) : y;
  return r;
}

void randomize_norms(MiniMaxSparseAttention& m) {
  torch::NoGradGuard no_grad;
  for (torch::Tensor* w : {&m->q_norm, &m->k_norm, &m->idx_q_norm, &m->idx_k_norm}) {
    if (w->defined()) w->uniform_(0.5, 1.5);
  }
}

TEST(MiniMaxSparseAttention, MatchesNaiveReimplementation) {
  std::vector<MiniMaxSparseAttentionOptions> configs = {
      small(2).index_dim(12).rope_dim(4), v04(1).index_dim(6).bias(true),
      small(2).causal(false).force_current_block(false),
      MiniMaxSparseAttentionOptions(32, 4, 1).block_size(5).top_k(1).rope_theta(100.0)};
  for (size_t n = 0; n < configs.size(); ++n) {
    torch::manual_seed(static_cast<uint64_t>(n));
    MiniMaxSparseAttention attn(configs[n]);
    randomize_norms(attn);
    attn->to(torch::kDouble);  // no near-ties between float roundings in the selection
    attn->eval();
    torch::Tensor x = torch::randn({2, 13, 32}, torch::kDouble);
    MiniMaxSparseOutput r = attn->forward_with_aux_sparse(x);
    NaiveMsa expected = naive_msa(attn, x);
    EXPECT_LT(max_abs_diff(r.output, expected.output), 1e-10) << "config " << n;
    EXPECT_TRUE(torch::equal(r.keep, expected.keep)) << "config " << n;
    EXPECT_TRUE(torch::equal(r.selected_blocks, expected.blocks)) << "config " << n;
  }
}

// The fused path (gather kernel over the tokens of the kept blocks, taken by forward) equals the
// masked dense path (taken when the weights are requested), forward and backward.
TEST(MiniMaxSparseAttention, GatherPathMatchesMaskedDensePath) {
  struct Case {
    const char* name;
    MiniMaxSparseAttentionOptions options;
  };
  const std::vector<Case> cases{
      {"top2", small(2).detach_index(false)},
      {"top1_non_causal", small(1).causal(false)},
      {"no_forced_block_groups4",
       MiniMaxSparseAttentionOptions(32, 4, 4).block_size(3).top_k(2).force_current_block(false)},
      {"all_blocks", small(1000).use_rope(false)},
  };
  for (const auto& c : cases) {
    for (bool with_mask : {false, true}) {
      torch::manual_seed(2);
      MiniMaxSparseAttention attn(c.options);
      torch::Tensor x0 = torch::randn({2, 15, 32});
      torch::Tensor mask;
      if (with_mask) mask = torch::rand({2, 15, 15}) > 0.3;
      torch::Tensor grad_out = torch::randn({2, 15, 32});
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
      const std::string where = std::string(c.name) + " mask " + (with_mask ? "1" : "0");
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

TEST(MiniMaxSparseAttention, ShapeWithPadding) {
  torch::manual_seed(0);
  MiniMaxSparseAttention attn(small(2));
  torch::Tensor x = torch::randn({2, 18, 32});
  MiniMaxSparseOutput r = attn->forward_with_aux_sparse(x);
  EXPECT_EQ(r.output.sizes(), x.sizes());
  EXPECT_TRUE(torch::isfinite(r.output).all().item<bool>());
  EXPECT_EQ(r.index_scores.sizes(), (std::vector<int64_t>{2, 2, 18, 18}));
  EXPECT_EQ(r.index_scores.scalar_type(), torch::kFloat);
  EXPECT_EQ(r.keep.sizes(), (std::vector<int64_t>{2, 2, 18, 18}));
  EXPECT_EQ(r.block_scores.sizes(), (std::vector<int64_t>{2, 2, 18, 5}));
  EXPECT_EQ(r.selected_blocks.sizes(), (std::vector<int64_t>{2, 2, 18, 5}));
  EXPECT_EQ(r.attn_weights.sizes(), (std::vector<int64_t>{2, 4, 18, 18}));
}

TEST(MiniMaxSparseAttention, BlockCountPerQuery) {
  torch::manual_seed(0);
  const int64_t T = 19, bs = 4, top_k = 2;
  MiniMaxSparseAttention attn(small(top_k));
  MiniMaxSparseOutput r = attn->forward_with_aux_sparse(torch::randn({2, T, 32}));
  torch::Tensor count = r.selected_blocks.sum(-1);  // [B, Gk, T]
  for (int64_t t = 0; t < T; ++t) {
    const int64_t visible_blocks = t / bs + 1;
    const int64_t low = std::min(top_k, visible_blocks);
    EXPECT_GE(count.select(2, t).min().item<int64_t>(), low) << t;
    EXPECT_LE(count.select(2, t).max().item<int64_t>(), low + 1) << t;  // + the forced block
    EXPECT_TRUE(r.selected_blocks.select(2, t).select(-1, t / bs).all().item<bool>()) << t;
  }
  EXPECT_FALSE((r.keep & torch::ones({T, T}, torch::kBool).triu(1)).any().item<bool>());
  // the attention weights live on the kept keys only
  torch::Tensor keep_h = r.keep.repeat_interleave(2, 1);
  EXPECT_FALSE(((r.attn_weights > 0) & keep_h.logical_not()).any().item<bool>());
}

TEST(MiniMaxSparseAttention, DegradesToDenseGroupedQueryAttention) {
  for (bool rope : {false, true}) {
    torch::manual_seed(0);
    MiniMaxSparseAttention attn(small(1000).use_rope(rope).index_dim(12).rope_dim(rope ? 4 : 0));
    randomize_norms(attn);
    attn->eval();
    const int64_t T = 14;
    torch::Tensor x = torch::randn({2, T, 32});
    MiniMaxSparseOutput r = attn->forward_with_aux_sparse(x);
    torch::Tensor tril = torch::ones({T, T}, torch::kBool).tril();
    EXPECT_TRUE(torch::equal(r.attn_weights > 0, tril.expand({2, 4, T, T})));

    auto gqa_options = GroupedQueryAttentionOptions(32, 4, 2).causal(true).qk_norm_eps(1e-6);
    if (rope) gqa_options.rope(RopeOptions().dim(4));
    GroupedQueryAttention gqa(gqa_options);
    {
      torch::NoGradGuard no_grad;
      gqa->q_proj->weight.copy_(attn->q->weight);
      gqa->k_proj->weight.copy_(attn->k->weight);
      gqa->v_proj->weight.copy_(attn->v->weight);
      gqa->o_proj->weight.copy_(attn->proj->weight);
      gqa->q_norm->weight.copy_(attn->q_norm);
      gqa->k_norm->weight.copy_(attn->k_norm);
    }
    gqa->eval();
    AttentionOutput dense = gqa->forward_with_aux(x);
    EXPECT_LT(max_abs_diff(r.output, dense.output), 1e-5) << "rope " << rope;
    EXPECT_LT(max_abs_diff(r.attn_weights, dense.attn_weights), 1e-5) << "rope " << rope;
  }
}

TEST(MiniMaxSparseAttention, SparserThanDense) {
  torch::manual_seed(0);
  const int64_t T = 32;
  MiniMaxSparseAttention attn(small(1));
  MiniMaxSparseOutput r = attn->forward_with_aux_sparse(torch::randn({2, T, 32}));
  const double causal_pairs = T * (T + 1) / 2.0;
  const double kept = (r.attn_weights > 0).sum().item<double>() / (2 * 4);
  EXPECT_LT(kept / causal_pairs, 0.5);
}

TEST(MiniMaxSparseAttention, IndexBranchTrainsOnlyWithAuxLoss) {
  torch::manual_seed(0);
  torch::Tensor x = torch::randn({2, 12, 32});
  MiniMaxSparseAttention lm(small(2));
  lm(x).pow(2).sum().backward();
  EXPECT_FALSE(lm->idx_q->weight.grad().defined());
  EXPECT_FALSE(lm->idx_k->weight.grad().defined());
  EXPECT_FALSE(lm->idx_q_norm.grad().defined());
  EXPECT_FALSE(lm->idx_k_norm.grad().defined());
  EXPECT_TRUE(lm->q_norm.grad().defined());  // the main QK norms train with the LM loss
  EXPECT_TRUE(lm->k_norm.grad().defined());
  EXPECT_GT(lm->q_norm.grad().abs().sum().item<double>(), 0.0);

  MiniMaxSparseAttention aux(small(2));
  MiniMaxSparseOutput r = aux->forward_with_aux_sparse(x);
  msa_index_aux_loss(r.index_scores, r.attn_weights, r.keep).backward();
  for (const torch::Tensor& w :
       {aux->idx_q->weight, aux->idx_k->weight, aux->idx_q_norm, aux->idx_k_norm}) {
    ASSERT_TRUE(w.grad().defined());
    EXPECT_GT(w.grad().abs().sum().item<double>(), 0.0);
  }
  for (const torch::Tensor& w : {aux->q->weight, aux->k->weight, aux->v->weight, aux->proj->weight,
                                 aux->q_norm, aux->k_norm}) {
    EXPECT_FALSE(w.grad().defined());
  }
}

TEST(MiniMaxSparseAttention, IndexBranchDetachedFromBackbone) {
  for (bool detach : {true, false}) {
    torch::manual_seed(0);
    MiniMaxSparseAttention attn(small(2).detach_index(detach));
    torch::Tensor x = torch::randn({1, 10, 32}, torch::requires_grad());
    MiniMaxSparseOutput r = attn->forward_with_aux_sparse(x);
    msa_index_aux_loss(r.index_scores, r.attn_weights, r.keep).backward();
    EXPECT_EQ(x.grad().defined(), !detach) << "detach " << detach;
  }
}

TEST(MiniMaxSparseAttention, AuxLossIsANonNegativeKl) {
  torch::manual_seed(0);
  MiniMaxSparseAttention attn(small(2));
  MiniMaxSparseOutput r = attn->forward_with_aux_sparse(torch::randn({2, 13, 32}));
  torch::Tensor loss = msa_index_aux_loss(r.index_scores, r.attn_weights, r.keep);
  EXPECT_TRUE(torch::isfinite(loss).item<bool>());
  EXPECT_GT(loss.item<double>(), 0.0);

  // against the formula, in double: teacher = group mean, student = log_softmax over keep
  const int64_t B = 2, Gk = 2, G = 3, T = 6;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  torch::Tensor keep = (torch::rand({B, Gk, T, T}) > 0.4) | torch::eye(T, torch::kBool);
  keep.select(2, 5).select(1, 1).fill_(false);  // group 1, query 5: nothing kept
  torch::Tensor logits = torch::randn({B, Gk * G, T, T}, torch::kDouble);
  torch::Tensor keep_h = keep.repeat_interleave(G, 1);
  torch::Tensor weights =
      torch::softmax(logits.masked_fill(keep_h.logical_not(), neg_inf), -1).nan_to_num(0.0);
  torch::Tensor scores = torch::randn({B, Gk, T, T}, torch::kDouble);
  double expected = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < Gk; ++g) {
      for (int64_t t = 0; t < T; ++t) {
        double mx = neg_inf, lse = 0;
        for (int64_t s = 0; s < T; ++s) {
          if (keep[b][g][t][s].item<bool>()) mx = std::max(mx, scores[b][g][t][s].item<double>());
        }
        for (int64_t s = 0; s < T; ++s) {
          if (keep[b][g][t][s].item<bool>())
            lse += std::exp(scores[b][g][t][s].item<double>() - mx);
        }
        for (int64_t s = 0; s < T; ++s) {
          double teacher = 0;
          for (int64_t h = g * G; h < (g + 1) * G; ++h)
            teacher += weights[b][h][t][s].item<double>();
          teacher /= G;
          if (teacher <= 0) continue;
          expected += teacher * (std::log(teacher) -
                                 (scores[b][g][t][s].item<double>() - mx - std::log(lse)));
        }
      }
    }
  }
  EXPECT_NEAR(msa_index_aux_loss(scores, weights, keep).item<double>(), expected / (B * Gk * T),
              1e-10);
  // a student equal to the teacher gives 0
  torch::Tensor teacher = weights.view({B, Gk, G, T, T}).mean(2);
  torch::Tensor perfect = torch::log(teacher).masked_fill(keep.logical_not(), 0.0);
  EXPECT_NEAR(msa_index_aux_loss(perfect, weights, keep).item<double>(), 0.0, 1e-12);
}

// attnhut 0.4.0's block-level loss, by loops in double: per (b, g, t) the teacher is each key
// block's attention mass (summed over its tokens, averaged over the group's heads) normalised to
// sum 1; loss = mean over (b, g, t) of -sum_n teacher_n log_softmax(block_scores)_n.
TEST(MiniMaxSparseAttention, BlockAuxLossV040MatchesTheFormula) {
  torch::manual_seed(1);
  const int64_t B = 2, G = 2, gs = 3, T = 10, bs = 4;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  torch::Tensor future = torch::ones({T, T}, torch::kBool).triu(1);
  torch::Tensor weights =
      torch::softmax(torch::randn({B, G * gs, T, T}, torch::kDouble).masked_fill(future, neg_inf),
                     -1);
  for (int64_t nb : {3, 4}) {  // ceil(T / bs), and one block past the keys
    torch::Tensor scores = torch::randn({B, G, T, nb}, torch::kDouble);
    // invisible (future) blocks score -inf, as the module returns them
    for (int64_t t = 0; t < T; ++t) scores.select(2, t).slice(-1, t / bs + 1).fill_(neg_inf);
    double expected = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t t = 0; t < T; ++t) {
          std::vector<double> mass(nb, 0.0);
          for (int64_t h = g * gs; h < (g + 1) * gs; ++h) {
            for (int64_t s = 0; s < T; ++s) mass[s / bs] += weights[b][h][t][s].item<double>() / gs;
          }
          const double total = std::accumulate(mass.begin(), mass.end(), 0.0);
          double mx = neg_inf, lse = 0;
          for (int64_t n = 0; n < nb; ++n) mx = std::max(mx, scores[b][g][t][n].item<double>());
          for (int64_t n = 0; n < nb; ++n) lse += std::exp(scores[b][g][t][n].item<double>() - mx);
          for (int64_t n = 0; n < nb; ++n) {
            if (mass[n] == 0) continue;
            expected -= mass[n] / total * (scores[b][g][t][n].item<double>() - mx - std::log(lse));
          }
        }
      }
    }
    torch::Tensor s_grad = scores.clone().requires_grad_(true);
    torch::Tensor w_grad = weights.clone().requires_grad_(true);
    torch::Tensor loss = msa_index_aux_loss_v040(s_grad, w_grad, bs, gs);
    EXPECT_NEAR(loss.item<double>(), expected / (B * G * T), 1e-12) << "nb " << nb;
    loss.backward();
    ASSERT_TRUE(s_grad.grad().defined());
    EXPECT_TRUE(torch::isfinite(s_grad.grad()).all().item<bool>()) << "no NaN through -inf";
    EXPECT_FALSE(w_grad.grad().defined()) << "the teacher is detached";
  }
  // float32 in, float32 out
  EXPECT_EQ(msa_index_aux_loss_v040(torch::randn({1, 2, 5, 2}), torch::rand({1, 4, 5, 5}), 4, 2)
                .scalar_type(),
            torch::kFloat);
}

// On the module's own outputs (0.4.0 flags): finite, positive, and it trains only the index branch.
TEST(MiniMaxSparseAttention, BlockAuxLossV040TrainsTheIndexBranch) {
  torch::manual_seed(2);
  MiniMaxSparseAttention attn(v04(2));
  MiniMaxSparseOutput r = attn->forward_with_aux_sparse(torch::randn({2, 13, 32}));
  ASSERT_EQ(r.block_scores.sizes(), torch::IntArrayRef({2, 2, 13, 4}));
  torch::Tensor loss = msa_index_aux_loss_v040(r.block_scores, r.attn_weights, /*block_size=*/4,
                                               /*group_size=*/2);
  EXPECT_TRUE(torch::isfinite(loss).item<bool>());
  EXPECT_GT(loss.item<double>(), 0.0);
  loss.backward();
  for (const torch::Tensor& w : {attn->idx_q->weight, attn->idx_k->weight}) {
    ASSERT_TRUE(w.grad().defined());
    EXPECT_TRUE(torch::isfinite(w.grad()).all().item<bool>());
    EXPECT_GT(w.grad().abs().sum().item<double>(), 0.0);
  }
  for (const torch::Tensor& w : {attn->q->weight, attn->k->weight, attn->v->weight}) {
    EXPECT_FALSE(w.grad().defined());
  }
}

TEST(MiniMaxSparseAttention, PartialRopeRotatesOnlyTheFirstChannels) {
  torch::manual_seed(0);
  // With rope_dim 4 of head width 8 the module equals the naive reference (which rotates the
  // first 4 channels only) and differs from the full rotation of 0.4.0.
  MiniMaxSparseAttention partial(small(1000).rope_dim(4).qk_norm(false));
  MiniMaxSparseAttention full(small(1000).partial_rope(false).qk_norm(false));
  testing::copy_parameters(*partial, *full);
  partial->eval();
  full->eval();
  torch::Tensor x = torch::randn({1, 12, 32});
  torch::Tensor y = partial(x);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  EXPECT_LT(max_abs_diff(y, naive_msa(partial, x).output), 1e-5);
  EXPECT_GT(max_abs_diff(y, full(x)), 1e-4);
  EXPECT_EQ(partial->options.rope_dim(), 4);
  EXPECT_EQ(MiniMaxSparseAttention(small(2).index_dim(6))->options.rope_dim(), 6);
}

TEST(MiniMaxSparseAttention, AttnMaskedKeysAreNeverKept) {
  torch::manual_seed(0);
  MiniMaxSparseAttention attn(small(1000));
  const int64_t T = 9;
  torch::Tensor x = torch::randn({2, T, 32});
  torch::Tensor mask = torch::rand({2, T, T}) > 0.3;
  mask.select(1, 3).fill_(false);
  MiniMaxSparseOutput r = attn->forward_with_aux_sparse(x, mask);
  torch::Tensor visible = mask & torch::ones({T, T}, torch::kBool).tril();
  EXPECT_TRUE(torch::equal(r.keep, visible.unsqueeze(1).expand({2, 2, T, T})));
  EXPECT_EQ(r.output.select(1, 3).abs().max().item<double>(), 0.0);
  EXPECT_TRUE(testing::close(attn(x, mask), r.output));
  ATTNKIT_EXPECT_ERROR(attn(x, torch::ones({2, 4, T, T}, torch::kBool)),
                       HasSubstr("MiniMaxSparseAttention"), HasSubstr("attn_mask"));
}

TEST(MiniMaxSparseAttention, DecodeCachesNormedRotatedKeysAndIndexKeys) {
  torch::manual_seed(0);
  MiniMaxSparseAttention attn(small(1).index_dim(12).rope_dim(4));
  randomize_norms(attn);
  attn->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 15, 32});
  DecodeState state = attn->init_state(2);
  std::vector<torch::Tensor> parts;
  for (int64_t t = 0; t < 15; ++t) parts.push_back(attn(x.narrow(1, t, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), attn(x)), 1e-5);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"index_k", "k", "v"}));
  // per token: k and v (Gk * hd each) plus the index key (di), float32
  EXPECT_EQ(state.bytes(), 2 * 15 * (2 * 2 * 8 + 12) * 4);
  EXPECT_FALSE(MiniMaxSparseAttention(small(2).causal(false))->supports_decoding());
}

// With every index score equal the earlier blocks win, in the full forward and in every
// decoding step alike (a decoding step sees fewer blocks than the full forward).
TEST(MiniMaxSparseAttention, TiesGoToEarlierBlocksWhenDecodingToo) {
  torch::manual_seed(0);
  MiniMaxSparseAttention attn(small(2).force_current_block(false));
  attn->eval();
  torch::NoGradGuard no_grad;
  attn->idx_k->weight.zero_();  // index keys are 0, so every score is 0
  const int64_t T = 17, nb = 5;
  torch::Tensor x = torch::randn({1, T, 32});
  MiniMaxSparseOutput r = attn->forward_with_aux_sparse(x);
  torch::Tensor expected = torch::zeros({T, nb}, torch::kBool);
  for (int64_t t = 0; t < T; ++t)
    expected[t].narrow(0, 0, std::min<int64_t>(2, t / 4 + 1)).fill_(true);
  EXPECT_TRUE(torch::equal(r.selected_blocks, expected.expand({1, 2, T, nb})));
  DecodeState state = attn->init_state(1);
  std::vector<torch::Tensor> parts;
  for (int64_t t = 0; t < T; ++t) parts.push_back(attn(x.narrow(1, t, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), r.output), 1e-5);
}

TEST(MiniMaxSparseAttention, ParametersAndPrint) {
  MiniMaxSparseAttention v05(small(2).index_dim(12));
  std::vector<std::string> names;
  for (const auto& p : v05->named_parameters()) names.push_back(p.key());
  // a module's own (raw) parameters come before its children's
  EXPECT_EQ(names, (std::vector<std::string>{"q_norm", "k_norm", "idx_q_norm", "idx_k_norm",
                                             "q.weight", "k.weight", "v.weight", "idx_q.weight",
                                             "idx_k.weight", "proj.weight"}));
  EXPECT_EQ(v05->k->weight.sizes(), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(v05->idx_q->weight.sizes(), (std::vector<int64_t>{24, 32}));
  EXPECT_EQ(v05->idx_k->weight.sizes(), (std::vector<int64_t>{12, 32}));
  EXPECT_EQ(v05->idx_q_norm.sizes(), (std::vector<int64_t>{12}));
  EXPECT_TRUE(torch::equal(v05->q_norm, torch::ones({8})));
  MiniMaxSparseAttention old(v04(2));
  names.clear();
  for (const auto& p : old->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"q.weight", "k.weight", "v.weight", "idx_q.weight",
                                             "idx_k.weight", "proj.weight"}));
  std::ostringstream s;
  v05->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::MiniMaxSparseAttention(dim=32, num_heads=4, num_kv_groups=2, block_size=4, "
            "top_k=2, index_dim=12, rope_dim=8, partial_rope=true, causal=true, use_rope=true, "
            "rope_theta=10000, force_current_block=true, bias=false, qk_norm=true, "
            "qk_norm_eps=1e-06, detach_index=true)");
  MiniMaxSparseAttentionOptions defaults(64, 4, 2);
  EXPECT_EQ(defaults.block_size(), 128);
  EXPECT_EQ(defaults.top_k(), 16);
  EXPECT_TRUE(defaults.qk_norm() && defaults.detach_index() && defaults.partial_rope());
  EXPECT_TRUE(defaults.causal() && defaults.use_rope() && defaults.force_current_block());
  auto copy = std::dynamic_pointer_cast<MiniMaxSparseAttentionImpl>(v05->clone());
  ASSERT_NE(copy, nullptr);
  torch::Tensor x = torch::randn({1, 6, 32});
  EXPECT_TRUE(torch::equal(copy->forward(x), v05(x)));
}

TEST(MiniMaxSparseAttention, BadConstructorArguments) {
  using Opt = MiniMaxSparseAttentionOptions;
  auto make = [](Opt o) { return MiniMaxSparseAttention(o); };
  ATTNKIT_EXPECT_ERROR(make(Opt(0, 4, 2)), HasSubstr("MiniMaxSparseAttention"),
                       HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 0, 2)), HasSubstr("num_heads must be positive"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 0)), HasSubstr("num_kv_groups must be positive"));
  ATTNKIT_EXPECT_ERROR(make(Opt(30, 4, 2)),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 3)),
                       HasSubstr("num_heads (4) must be divisible by num_kv_groups (3)"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).block_size(0)), HasSubstr("block_size must be positive"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).top_k(0)), HasSubstr("top_k must be positive"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).index_dim(-2)), HasSubstr("index_dim must be >= 0"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).rope_dim(-2)), HasSubstr("rope_dim must be >= 0"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).rope_dim(3)), HasSubstr("rope_dim must be even, got 3"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).rope_dim(16)),
                       HasSubstr("rope_dim (16) must be <= the head width dim / num_heads (8)"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).index_dim(4).rope_dim(6)),
                       HasSubstr("rope_dim (6) must be <= index_dim (4)"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).partial_rope(false).rope_dim(4)),
                       HasSubstr("no meaning with partial_rope(false)"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).partial_rope(false).index_dim(5)),
                       HasSubstr("even index_dim, got 5"));
  ATTNKIT_EXPECT_ERROR(make(Opt(36, 4, 2).partial_rope(false)),
                       HasSubstr("even head width dim / num_heads, got 9"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).rope_theta(1.0)), HasSubstr("rope_theta must be > 1"));
  ATTNKIT_EXPECT_ERROR(make(Opt(32, 4, 2).qk_norm_eps(-1)), HasSubstr("qk_norm_eps must be >= 0"));
  // without rope the rope checks do not apply
  EXPECT_NO_THROW(make(Opt(36, 4, 2).use_rope(false)));
  ATTNKIT_EXPECT_ERROR(msa_index_aux_loss(torch::randn({1, 2, 3, 3}), torch::rand({1, 3, 3, 3}),
                                          torch::ones({1, 2, 3, 3}, torch::kBool)),
                       HasSubstr("msa_index_aux_loss"), HasSubstr("H divisible by Gk"));
  ATTNKIT_EXPECT_ERROR(msa_index_aux_loss(torch::randn({1, 2, 3, 3}), torch::rand({1, 2, 3, 3}),
                                          torch::ones({1, 2, 3, 3})),
                       HasSubstr("bool keep"));
  // the 0.4.0 block loss: [B, G, T, nb] against [B, G * group_size, T, Tk <= nb * block_size]
  torch::Tensor scores = torch::randn({1, 2, 5, 2}), weights = torch::rand({1, 4, 5, 5});
  ATTNKIT_EXPECT_ERROR(msa_index_aux_loss_v040(scores, weights, 4, 3),
                       HasSubstr("msa_index_aux_loss_v040"),
                       HasSubstr("H = G * group_size (2 * 3)"));
  ATTNKIT_EXPECT_ERROR(msa_index_aux_loss_v040(scores, weights, 2, 2),
                       HasSubstr("msa_index_aux_loss_v040"),
                       HasSubstr("5 keys but block_scores covers nb * block_size = 2 * 2 = 4"));
  ATTNKIT_EXPECT_ERROR(msa_index_aux_loss_v040(scores, weights, 0, 2),
                       HasSubstr("msa_index_aux_loss_v040: block_size must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(msa_index_aux_loss_v040(scores, weights, 4, 0),
                       HasSubstr("msa_index_aux_loss_v040: group_size must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(msa_index_aux_loss_v040(scores.select(0, 0), weights, 4, 2),
                       HasSubstr("msa_index_aux_loss_v040"), HasSubstr("[B, G, T, nb]"));
}

}  // namespace
}  // namespace attnkit
