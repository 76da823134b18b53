#include <attnkit/attention/slot_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"

#include <ATen/CPUGeneratorImpl.h>

#include <sstream>

namespace attnkit {
namespace {

using ::testing::HasSubstr;
using testing::max_abs_diff;

at::Generator seeded(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

// attnhut test_slot::test_output_shape
TEST(SlotAttention, UpstreamOutputShape) {
  torch::manual_seed(0);
  SlotAttention slots(32, 5);
  torch::Tensor out = slots(torch::randn({2, 49, 32}));
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({2, 5, 32}));
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
}

// attnhut test_slot::test_gradients_flow
TEST(SlotAttention, UpstreamGradientsFlow) {
  torch::manual_seed(0);
  SlotAttention slots(32, 5);
  torch::Tensor x = torch::randn({2, 49, 32}, torch::requires_grad());
  (slots(x) * torch::randn({2, 5, 32})).sum().backward();
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0);
  for (const auto& p : slots->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

// attnhut test_slot::test_num_slots_configurable
TEST(SlotAttention, UpstreamNumSlotsConfigurable) {
  torch::manual_seed(0);
  SlotAttention slots(SlotAttentionOptions(32, 7).num_iters(2));
  EXPECT_EQ(slots(torch::randn({2, 49, 32})).sizes(), torch::IntArrayRef({2, 7, 32}));
}

TEST(SlotAttention, PermutationInvariantOverInputs) {
  torch::manual_seed(1);
  SlotAttention slots(16, 4);
  torch::Tensor x = torch::randn({2, 9, 16});
  torch::Tensor perm = torch::randperm(9);
  torch::NoGradGuard no_grad;
  torch::Tensor a = slots->forward(x, seeded(3));
  torch::Tensor b = slots->forward(x.index_select(1, perm), seeded(3));
  EXPECT_LT(max_abs_diff(a, b), 1e-5);
  // with other noise the slots differ, so the comparison above can fail
  EXPECT_GT(max_abs_diff(a, slots->forward(x, seeded(4))), 1e-4);
}

TEST(SlotAttention, GeneratorMakesRunsReproducible) {
  torch::manual_seed(2);
  SlotAttention slots(16, 3);
  torch::Tensor x = torch::randn({1, 6, 16});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(slots->forward(x, seeded(7)), slots->forward(x, seeded(7))));
  // the global RNG path is stochastic, and reproducible under manual_seed
  torch::Tensor g1 = slots(x), g2 = slots(x);
  EXPECT_GT(max_abs_diff(g1, g2), 1e-4);
  torch::manual_seed(5);
  torch::Tensor g3 = slots(x);
  torch::manual_seed(5);
  EXPECT_TRUE(torch::equal(slots(x), g3));
  // a generator seeded like the global RNG draws the same noise
  torch::manual_seed(5);
  EXPECT_TRUE(torch::equal(slots->forward(x, seeded(5)), g3));
}

// docs/catalog.md, "Slot attention", with the noise of a seeded generator, composed from
// plain torch ops.
TEST(SlotAttention, MatchesSpecComposition) {
  torch::manual_seed(3);
  SlotAttention slots(SlotAttentionOptions(8, 3).num_iters(2).hidden_dim(4));
  torch::Tensor x = torch::randn({2, 5, 8});
  torch::NoGradGuard no_grad;
  torch::Tensor got = slots->forward(x, seeded(9));

  auto params = slots->named_parameters();
  auto P = [&](const std::string& n) { return params[n].to(torch::kDouble); };
  auto lin = [&](const torch::Tensor& in, const std::string& n) {
    return in.matmul(P(n + ".weight").t()) + P(n + ".bias");
  };
  auto ln = [&](const torch::Tensor& in, const std::string& n) {
    torch::Tensor mu = in.mean(-1, true);
    torch::Tensor var = (in - mu).pow(2).mean(-1, true);
    return (in - mu) / torch::sqrt(var + 1e-5) * P(n + ".weight") + P(n + ".bias");
  };
  torch::Tensor noise = torch::randn({2, 3, 8}, seeded(9), torch::kFloat).to(torch::kDouble);
  torch::Tensor s = P("slot_mu") + P("slot_log_sigma").exp() * noise;
  torch::Tensor xi = ln(x.to(torch::kDouble), "norm_input");
  torch::Tensor k = lin(xi, "to_k"), v = lin(xi, "to_v");
  for (int it = 0; it < 2; ++it) {
    torch::Tensor q = lin(ln(s, "norm_slots"), "to_q") / std::sqrt(8.0);
    torch::Tensor e = torch::exp(q.matmul(k.transpose(1, 2)));  // [B, S, N]
    torch::Tensor a = e / e.sum(1, true) + 1e-8;
    a = a / a.sum(-1, true);
    torch::Tensor u = a.matmul(v);
    // GRU cell: r, z, n gates in that order (PyTorch layout)
    torch::Tensor gi = u.matmul(P("gru.weight_ih").t()) + P("gru.bias_ih");
    torch::Tensor gh = s.matmul(P("gru.weight_hh").t()) + P("gru.bias_hh");
    auto chunk = [](const torch::Tensor& t, int i) { return t.narrow(-1, i * 8, 8); };
    torch::Tensor r = torch::sigmoid(chunk(gi, 0) + chunk(gh, 0));
    torch::Tensor z = torch::sigmoid(chunk(gi, 1) + chunk(gh, 1));
    torch::Tensor n = torch::tanh(chunk(gi, 2) + r * chunk(gh, 2));
    s = (1 - z) * n + z * s;
    torch::Tensor h = torch::relu(lin(ln(s, "norm_pre_mlp"), "mlp.0"));
    s = s + lin(h, "mlp.2");
  }
  EXPECT_LT(max_abs_diff(got, s), 1e-5);
}

TEST(SlotAttention, ParameterNamesFollowAttnhut) {
  SlotAttention slots(SlotAttentionOptions(16, 4).hidden_dim(24));
  std::map<std::string, std::vector<int64_t>> expected = {
      {"slot_mu", {1, 1, 16}},       {"slot_log_sigma", {1, 1, 16}},
      {"to_q.weight", {16, 16}},     {"to_q.bias", {16}},
      {"to_k.weight", {16, 16}},     {"to_k.bias", {16}},
      {"to_v.weight", {16, 16}},     {"to_v.bias", {16}},
      {"gru.weight_ih", {48, 16}},   {"gru.weight_hh", {48, 16}},
      {"gru.bias_ih", {48}},         {"gru.bias_hh", {48}},
      {"mlp.0.weight", {24, 16}},    {"mlp.0.bias", {24}},
      {"mlp.2.weight", {16, 24}},    {"mlp.2.bias", {16}},
      {"norm_input.weight", {16}},   {"norm_input.bias", {16}},
      {"norm_slots.weight", {16}},   {"norm_slots.bias", {16}},
      {"norm_pre_mlp.weight", {16}}, {"norm_pre_mlp.bias", {16}}};
  auto params = slots->named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes().vec(), shape) << name;
  }
  // hidden_dim below dim is raised to dim
  SlotAttention narrow(SlotAttentionOptions(16, 4).hidden_dim(8));
  EXPECT_EQ(narrow->named_parameters()["mlp.0.weight"].sizes(), torch::IntArrayRef({16, 16}));
  std::ostringstream s;
  slots->pretty_print(s);
  EXPECT_EQ(s.str(),
            "attnkit::SlotAttention(dim=16, num_slots=4, num_iters=3, hidden_dim=24, eps=1e-08)");
}

TEST(SlotAttention, Float64AndClone) {
  torch::manual_seed(4);
  SlotAttention slots(8, 2);
  torch::Tensor x = torch::randn({1, 4, 8});
  torch::NoGradGuard no_grad;
  torch::Tensor y32 = slots->forward(x, seeded(1));
  auto copy = std::dynamic_pointer_cast<SlotAttentionImpl>(slots->clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_TRUE(torch::equal(copy->forward(x, seeded(1)), y32));
  slots->to(torch::kDouble);
  torch::Tensor y64 = slots->forward(x.to(torch::kDouble), seeded(1));
  EXPECT_EQ(y64.scalar_type(), torch::kDouble);  // (double noise is another random stream)
  EXPECT_TRUE(torch::isfinite(y64).all().item<bool>());
}

TEST(SlotAttention, ErrorsNameTheArgument) {
  ATTNKIT_EXPECT_ERROR(SlotAttention(0, 4),
                       HasSubstr("SlotAttention: dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(SlotAttention(8, 0), HasSubstr("num_slots must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(SlotAttention(SlotAttentionOptions(8, 2).num_iters(0)),
                       HasSubstr("num_iters must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(SlotAttention(SlotAttentionOptions(8, 2).hidden_dim(-1)),
                       HasSubstr("hidden_dim must be positive, got -1"));
  ATTNKIT_EXPECT_ERROR(SlotAttention(SlotAttentionOptions(8, 2).eps(-1e-3)),
                       HasSubstr("eps must be >= 0"));
  SlotAttention slots(8, 2);
  ATTNKIT_EXPECT_ERROR(slots(torch::randn({4, 8})), HasSubstr("SlotAttention"), HasSubstr("3-D"));
  ATTNKIT_EXPECT_ERROR(slots(torch::randn({1, 4, 9})), HasSubstr("dim (8), got 9"));
  ATTNKIT_EXPECT_ERROR(slots(torch::ones({1, 4, 8}, torch::kLong)), HasSubstr("floating-point"));
  ATTNKIT_EXPECT_ERROR(slots(torch::randn({1, 4, 8}, torch::kDouble)), HasSubstr("->to(Double)"));
}

}  // namespace
}  // namespace attnkit
