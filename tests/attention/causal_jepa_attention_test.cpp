#include <attnkit/attention/causal_jepa_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"

#include <sstream>

namespace attnkit {
namespace {

using ::testing::HasSubstr;
using testing::max_abs_diff;

// attnhut's test configuration: dim 32, 4 heads, 5 objects, 3 history frames, 2 future frames.
CausalJEPAAttentionOptions small_options() {
  return CausalJEPAAttentionOptions(32, 4, /*num_slots=*/5, /*history_frames=*/3)
      .pred_frames(2)
      .depth(2);
}

// attnhut test_cjepa::test_shapes
TEST(CausalJEPAAttention, UpstreamShapes) {
  torch::manual_seed(0);
  CausalJEPAAttention predictor(small_options());
  CausalJEPAOutput out = predictor(torch::randn({2, 3, 5, 32}));
  EXPECT_EQ(out.pred.sizes(), torch::IntArrayRef({2, 5, 5, 32}));
  EXPECT_EQ(out.mask_slots.sizes(), torch::IntArrayRef({2}));
  EXPECT_EQ(std::get<0>(torch::_unique(out.mask_slots)).numel(), 2);  // distinct objects
  EXPECT_TRUE(torch::isfinite(out.pred).all().item<bool>());
}

// attnhut test_cjepa::test_predict_returns_future_only
TEST(CausalJEPAAttention, UpstreamPredictReturnsFutureOnly) {
  torch::manual_seed(0);
  CausalJEPAAttention predictor(small_options());
  torch::Tensor slots = torch::randn({2, 3, 5, 32});
  torch::Tensor future = predictor->predict(slots);
  EXPECT_EQ(future.sizes(), torch::IntArrayRef({2, 2, 5, 32}));
  // predict is forward with nothing hidden in the history, cut to the future frames
  torch::NoGradGuard no_grad;
  torch::Tensor all = predictor(slots, torch::empty({0}, torch::kLong)).pred;
  EXPECT_TRUE(testing::close(future, all.narrow(1, 3, 2)));
  EXPECT_GT(max_abs_diff(
                future, predictor(slots, torch::tensor({1, 3}, torch::kLong)).pred.narrow(1, 3, 2)),
            1e-5);
}

// attnhut test_cjepa::test_gradients_flow
TEST(CausalJEPAAttention, UpstreamGradientsFlow) {
  torch::manual_seed(0);
  CausalJEPAAttention predictor(small_options());
  torch::Tensor slots = torch::randn({2, 3, 5, 32}, torch::requires_grad());
  CausalJEPAOutput out = predictor(slots);
  cjepa_masked_loss(out.pred, torch::randn({2, 5, 5, 32}), out.mask_slots, 3).backward();
  EXPECT_GT(slots.grad().abs().sum().item<double>(), 0.0);
  for (const auto& p : predictor->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

// attnhut test_cjepa::test_loss_scores_only_inferred_positions
TEST(CausalJEPAAttention, UpstreamLossScoresOnlyInferredPositions) {
  torch::manual_seed(0);
  torch::Tensor pred = torch::randn({2, 5, 5, 32});
  torch::Tensor hide = torch::tensor({1, 3}, torch::kLong);
  EXPECT_EQ(cjepa_masked_loss(pred, pred, hide, 3).item<float>(), 0.0f);
  auto changed = [&](int64_t t, int64_t s) {
    torch::Tensor target = pred.clone();
    target.select(1, t).select(1, s).add_(1.0);
    return cjepa_masked_loss(pred, target, hide, 3).item<double>();
  };
  EXPECT_EQ(changed(1, 0), 0.0);  // a visible history slot
  EXPECT_EQ(changed(2, 4), 0.0);
  EXPECT_EQ(changed(0, 1), 0.0);  // frame 0, even for a hidden object
  EXPECT_GT(changed(3, 0), 0.0);  // the future
  EXPECT_GT(changed(2, 3), 0.0);  // a hidden object in the history
  // the value: a mean over B * (2 future frames * 5 + 2 history frames * 2 hidden) positions
  torch::Tensor target = pred.clone();
  target.select(1, 4).add_(2.0);  // frame 4: every object and channel off by 2 -> error 4
  EXPECT_NEAR(cjepa_masked_loss(pred, target, hide, 3).item<double>(), 4.0 * 5 / 14, 1e-5);
}

// attnhut test_cjepa::test_permutation_equivariant_over_objects
TEST(CausalJEPAAttention, UpstreamPermutationEquivariantOverObjects) {
  torch::manual_seed(0);
  CausalJEPAAttention predictor(small_options());
  predictor->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor slots = torch::randn({2, 3, 5, 32});
  torch::Tensor hide = torch::tensor({0, 3}, torch::kLong);
  torch::Tensor perm =
      torch::tensor({2, 4, 0, 1, 3}, torch::kLong);  // new object i is old object perm[i]
  torch::Tensor inverse = torch::argsort(perm);      // old object o is new object inverse[o]
  torch::Tensor pred = predictor(slots, hide).pred;
  torch::Tensor pred_perm =
      predictor(slots.index_select(2, perm), inverse.index_select(0, hide)).pred;
  EXPECT_LT(max_abs_diff(pred_perm, pred.index_select(2, perm)), 1e-4);
  // hiding other objects changes the prediction, so the check above is not vacuous
  EXPECT_GT(max_abs_diff(predictor(slots, torch::tensor({1, 2}, torch::kLong)).pred, pred), 1e-4);
}

// The grid and blocks of docs/catalog.md, "Causal-JEPA attention", on the module's weights.
TEST(CausalJEPAAttention, MatchesSpecComposition) {
  torch::manual_seed(1);
  CausalJEPAAttention predictor(small_options().depth(1).mlp_dim(16));
  torch::Tensor slots = torch::randn({1, 3, 5, 32});
  torch::Tensor hide = torch::tensor({2}, torch::kLong);
  torch::NoGradGuard no_grad;
  torch::Tensor got = predictor(slots, hide).pred;

  auto params = predictor->named_parameters();
  auto P = [&](const std::string& n) { return params[n].to(torch::kDouble); };
  auto lin = [&](const torch::Tensor& in, const std::string& n) {
    return in.matmul(P(n + ".weight").t()) + P(n + ".bias");
  };
  auto ln = [&](const torch::Tensor& in, const std::string& n) {
    torch::Tensor mu = in.mean(-1, true);
    return (in - mu) / torch::sqrt((in - mu).pow(2).mean(-1, true) + 1e-5) * P(n + ".weight") +
           P(n + ".bias");
  };
  torch::Tensor s = slots.to(torch::kDouble);
  torch::Tensor grid = torch::zeros({1, 5, 5, 32}, torch::kDouble);
  for (int64_t t = 0; t < 5; ++t) {
    for (int64_t o = 0; o < 5; ++o) {
      const bool real = t == 0 || (t < 3 && o != 2);
      grid[0][t][o] =
          real ? s[0][t][o] + P("time_pos")[0][t][0]
               : P("mask_token")[0][0][0] + P("time_pos")[0][t][0] + lin(s[0][0][o], "id_proj");
    }
  }
  torch::Tensor x = grid.view({1, 25, 32});
  // attention: 4 heads of 8, bidirectional
  torch::Tensor q = lin(x, "blocks.0.attn.q_proj").view({1, 25, 4, 8}).transpose(1, 2);
  torch::Tensor k = lin(x, "blocks.0.attn.k_proj").view({1, 25, 4, 8}).transpose(1, 2);
  torch::Tensor v = lin(x, "blocks.0.attn.v_proj").view({1, 25, 4, 8}).transpose(1, 2);
  torch::Tensor a = torch::softmax(q.matmul(k.transpose(-1, -2)) / std::sqrt(8.0), -1);
  x = x + lin(a.matmul(v).transpose(1, 2).reshape({1, 25, 32}), "blocks.0.attn.o_proj");
  torch::Tensor h = lin(ln(x, "blocks.0.mlp.0"), "blocks.0.mlp.1");
  h = 0.5 * h * (1 + torch::erf(h / std::sqrt(2.0)));  // exact GELU
  x = x + lin(h, "blocks.0.mlp.4");
  torch::Tensor expected = lin(ln(x, "norm"), "to_out").view({1, 5, 5, 32});
  EXPECT_LT(max_abs_diff(got, expected), 1e-5);
}

TEST(CausalJEPAAttention, CloneCopiesTheAttentionBlocks) {
  torch::manual_seed(3);
  CausalJEPAAttention predictor(small_options());
  predictor->eval();
  auto copy = std::dynamic_pointer_cast<CausalJEPAAttentionImpl>(predictor->clone());
  ASSERT_TRUE(copy);
  torch::NoGradGuard no_grad;
  torch::Tensor slots = torch::randn({2, 3, 5, 32});
  torch::Tensor hidden = torch::tensor({1, 3}, torch::kLong);
  EXPECT_TRUE(
      torch::equal(copy->forward(slots, hidden).pred, predictor->forward(slots, hidden).pred));
}

TEST(CausalJEPAAttention, ParametersAndPrint) {
  CausalJEPAAttention predictor(small_options());
  auto params = predictor->named_parameters();
  std::map<std::string, std::vector<int64_t>> expected = {{"mask_token", {1, 1, 1, 32}},
                                                          {"time_pos", {1, 5, 1, 32}},
                                                          {"id_proj.weight", {32, 32}},
                                                          {"id_proj.bias", {32}},
                                                          {"blocks.1.attn.q_proj.weight", {32, 32}},
                                                          {"blocks.1.attn.k_proj.bias", {32}},
                                                          {"blocks.1.attn.v_proj.weight", {32, 32}},
                                                          {"blocks.1.attn.o_proj.weight", {32, 32}},
                                                          {"blocks.0.mlp.0.weight", {32}},
                                                          {"blocks.0.mlp.1.weight", {128, 32}},
                                                          {"blocks.0.mlp.4.weight", {32, 128}},
                                                          {"blocks.0.mlp.4.bias", {32}},
                                                          {"norm.weight", {32}},
                                                          {"to_out.weight", {32, 32}},
                                                          {"to_out.bias", {32}}};
  for (const auto& [name, shape] : expected) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
  // 4 + 2 blocks * (8 attention + 6 mlp) + 4
  EXPECT_EQ(params.size(), 36u);
  EXPECT_LT(predictor->time_pos.abs().max().item<double>(), 0.2);  // std 0.02
  EXPECT_GT(predictor->time_pos.std().item<double>(), 0.01);
  CausalJEPAAttention no_bias(small_options().bias(false));
  EXPECT_EQ(no_bias->named_parameters().find("to_out.bias"), nullptr);
  std::ostringstream s;
  predictor->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::CausalJEPAAttention(dim=32, num_heads=4, num_slots=5, history_frames=3, "
            "pred_frames=2, num_masked_slots=2, depth=2, mlp_dim=128, dropout=0, bias=true)");
}

TEST(CausalJEPAAttention, ErrorsNameTheArgument) {
  auto opts = [] { return small_options(); };
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(0, 4, 5, 3),
                       HasSubstr("CausalJEPAAttention: dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(32, 0, 5, 3), HasSubstr("num_heads must be positive"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(30, 4, 5, 3),
                       HasSubstr("dim (30) must be divisible by num_heads (4)"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(32, 4, 0, 3),
                       HasSubstr("num_slots must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(32, 4, 5, 0),
                       HasSubstr("history_frames must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(opts().pred_frames(0)),
                       HasSubstr("pred_frames must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(opts().num_masked_slots(6)),
                       HasSubstr("num_masked_slots must be in [0, num_slots (5)], got 6"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(opts().depth(-1)), HasSubstr("depth must be >= 0"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(opts().mlp_dim(-4)), HasSubstr("mlp_dim must be >= 0"));
  ATTNKIT_EXPECT_ERROR(CausalJEPAAttention(opts().dropout(1.0)),
                       HasSubstr("dropout must be in [0, 1), got 1"));
  CausalJEPAAttention predictor(opts());
  ATTNKIT_EXPECT_ERROR(
      predictor(torch::randn({2, 4, 5, 32})),
      HasSubstr("slots of shape [B, history_frames, num_slots, dim] = [B, 3, 5, 32]"));
  torch::Tensor slots = torch::randn({2, 3, 5, 32});
  ATTNKIT_EXPECT_ERROR(predictor(slots, torch::tensor({5}, torch::kLong)),
                       HasSubstr("mask_slots must index objects in [0, 5)"));
  ATTNKIT_EXPECT_ERROR(predictor(slots, torch::tensor({1.0})), HasSubstr("integer dtype"));
  torch::Tensor pred = torch::randn({2, 5, 5, 32});
  ATTNKIT_EXPECT_ERROR(
      cjepa_masked_loss(pred, pred.narrow(1, 0, 4), torch::tensor({1}, torch::kLong), 3),
      HasSubstr("cjepa_masked_loss: expected target of the shape of pred"));
  ATTNKIT_EXPECT_ERROR(cjepa_masked_loss(pred, pred, torch::tensor({1}, torch::kLong), 0),
                       HasSubstr("history_frames must be in [1, frames (5)], got 0"));
  ATTNKIT_EXPECT_ERROR(cjepa_masked_loss(pred, pred, torch::empty({0}, torch::kLong), 5),
                       HasSubstr("no position to score"));
}

}  // namespace
}  // namespace attnkit
