// Tests for include/attnkit/core/reference_attention.h against a per-element loop implementation
// (softmax over the visible keys, docs/catalog.md, "Scaled dot-product attention") and
// against small torch compositions.

#include <attnkit/core/reference_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

namespace {

using attnkit::AttentionResult;
using attnkit::DotProductAttentionOptions;
using attnkit::reference_attention;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

constexpr double kInf = std::numeric_limits<double>::infinity();

class ReferenceAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

struct Naive {
  torch::Tensor output;   // [B, Hq, Tq, Dv] float64
  torch::Tensor lse;      // [B, Hq, Tq] float64
  torch::Tensor weights;  // [B, Hq, Tq, Tk] float64
};

// One query row at a time: key j is visible iff every rule lets it through; the softmax runs over
// the visible logits plus the (unscaled) sink; a row with nothing visible and no sink is zero.
Naive naive_attention(const torch::Tensor& q_in,
                      const torch::Tensor& k_in,
                      const torch::Tensor& v_in,
                      const DotProductAttentionOptions& o) {
  torch::Tensor q = q_in.to(torch::kDouble).contiguous();
  torch::Tensor k = k_in.to(torch::kDouble).contiguous();
  torch::Tensor v = v_in.to(torch::kDouble).contiguous();
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), Dv = v.size(3);
  const int64_t group = Hq / Hkv;
  const double scale = o.scale() ? *o.scale() : 1.0 / std::sqrt(double(D));
  torch::Tensor mask = o.mask().defined() ? o.mask().expand({B, Hq, Tq, Tk}).contiguous()
                                          : torch::ones({B, Hq, Tq, Tk}, torch::kBool);
  torch::Tensor bias = o.bias().defined()
                           ? o.bias().to(torch::kDouble).expand({B, Hq, Tq, Tk}).contiguous()
                           : torch::zeros({B, Hq, Tq, Tk}, torch::kDouble);
  torch::Tensor sinks = o.sinks().defined() ? o.sinks().to(torch::kDouble).contiguous()
                                            : torch::full({Hq}, -kInf, torch::kDouble);
  auto qa = q.accessor<double, 4>();
  auto ka = k.accessor<double, 4>();
  auto va = v.accessor<double, 4>();
  auto ma = mask.accessor<bool, 4>();
  auto ba = bias.accessor<double, 4>();
  auto sa = sinks.accessor<double, 1>();

  Naive r;
  r.output = torch::zeros({B, Hq, Tq, Dv}, torch::kDouble);
  r.lse = torch::full({B, Hq, Tq}, -kInf, torch::kDouble);
  r.weights = torch::zeros({B, Hq, Tq, Tk}, torch::kDouble);
  auto oa = r.output.accessor<double, 4>();
  auto la = r.lse.accessor<double, 3>();
  auto wa = r.weights.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kvh = h / group;
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t pos = i + (Tk - Tq);
        std::vector<double> logit(Tk, -kInf);
        double m = sa[h];
        for (int64_t j = 0; j < Tk; ++j) {
          bool visible = ma[b][h][i][j];
          if (o.causal() && j > pos) visible = false;
          if (o.window_left() && j < pos - *o.window_left()) visible = false;
          if (o.window_right() && j > pos + *o.window_right()) visible = false;
          if (!visible) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qa[b][h][i][d] * ka[b][kvh][j][d];
          logit[j] = dot * scale + ba[b][h][i][j];
          m = std::max(m, logit[j]);
        }
        if (m == -kInf) continue;  // nothing visible, no sink: zeros, lse = -inf
        double denom = std::exp(sa[h] - m);
        for (int64_t j = 0; j < Tk; ++j) denom += std::exp(logit[j] - m);
        la[b][h][i] = m + std::log(denom);
        for (int64_t j = 0; j < Tk; ++j) {
          const double w = std::exp(logit[j] - m) / denom;
          wa[b][h][i][j] = w;
          for (int64_t e = 0; e < Dv; ++e) oa[b][h][i][e] += w * va[b][kvh][j][e];
        }
      }
    }
  }
  return r;
}

// allclose that also requires the same -inf pattern (lse of fully masked rows) and no NaN.
::testing::AssertionResult close(const torch::Tensor& actual_in,
                                 const torch::Tensor& expected_in,
                                 double rtol,
                                 double atol) {
  torch::Tensor actual = actual_in.to(torch::kDouble);
  torch::Tensor expected = expected_in.to(torch::kDouble);
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << "sizes " << actual.sizes() << " vs " << expected.sizes();
  }
  if (torch::isnan(actual).any().item<bool>()) return ::testing::AssertionFailure() << "NaN";
  if (!torch::equal(torch::isinf(actual), torch::isinf(expected))) {
    return ::testing::AssertionFailure() << "different inf pattern";
  }
  torch::Tensor a = torch::where(torch::isinf(actual), torch::zeros_like(actual), actual);
  torch::Tensor e = torch::where(torch::isinf(expected), torch::zeros_like(expected), expected);
  if (!torch::allclose(a, e, rtol, atol)) {
    return ::testing::AssertionFailure() << "max abs diff " << (a - e).abs().max().item<double>();
  }
  return ::testing::AssertionSuccess();
}

// --- sweep against the loops ----------------------------------------------------------------

enum class MaskKind { kNone, kPerBatch /* [B, 1, Tq, Tk] */, kShared /* [Tq, Tk] */ };
enum class BiasKind { kNone, kPerHead /* [1, Hq, Tq, Tk] */, kFull /* [B, Hq, Tq, Tk] */ };

struct Case {
  std::string name;
  int64_t B = 2, Hq = 2, Hkv = 2, Tq = 5, Tk = 5, D = 8, Dv = 8;
  bool causal = false;
  std::optional<int64_t> window_left, window_right;
  bool sinks = false;
  MaskKind mask = MaskKind::kNone;
  BiasKind bias = BiasKind::kNone;
  std::optional<double> scale;
  torch::Dtype dtype = torch::kDouble;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> sweep_cases() {
  std::vector<Case> cs;
  auto add = [&cs](const char* name, auto&& set) {
    Case c;
    c.name = name;
    set(c);
    cs.push_back(c);
  };
  add("gqa1", [](Case&) {});
  add("gqa2", [](Case& c) { c.Hq = 4, c.Hkv = 2, c.Tk = 7; });
  add("gqa4", [](Case& c) { c.Hq = 4, c.Hkv = 1, c.Tq = 3, c.Tk = 6; });
  add("causal_square", [](Case& c) { c.Hq = 4, c.Hkv = 2, c.Tq = c.Tk = 7, c.causal = true; });
  add("causal_tq_lt_tk", [](Case& c) { c.Tq = 3, c.Tk = 9, c.causal = true; });
  // rows 0 and 1 see no key at all (pos = i - 2 < 0)
  add("causal_tq_gt_tk", [](Case& c) { c.Tq = 5, c.Tk = 3, c.causal = true; });
  add("decode_one_token", [](Case& c) { c.Tq = 1, c.Tk = 10, c.causal = true, c.window_left = 4; });
  add("window_left_causal", [](Case& c) { c.Tq = c.Tk = 11, c.causal = true, c.window_left = 3; });
  add("window_left0_causal", [](Case& c) { c.Tq = c.Tk = 6, c.causal = true, c.window_left = 0; });
  add("window_left_right", [](Case& c) { c.Tq = c.Tk = 9, c.window_left = 2, c.window_right = 1; });
  add("window_right_only", [](Case& c) { c.Tq = c.Tk = 8, c.window_right = 2; });
  add("window_tq_lt_tk", [](Case& c) { c.Tq = 4, c.Tk = 10, c.causal = true, c.window_left = 2; });
  add("sinks_scaled",
      [](Case& c) { c.Hq = 4, c.Hkv = 2, c.causal = true, c.sinks = true, c.scale = 0.7; });
  add("sinks_window",
      [](Case& c) { c.Tq = c.Tk = 9, c.causal = true, c.window_left = 2, c.sinks = true; });
  add("sinks_tq_gt_tk", [](Case& c) { c.Tq = 5, c.Tk = 3, c.causal = true, c.sinks = true; });
  add("mask_per_batch",
      [](Case& c) { c.Hq = 4, c.Hkv = 2, c.Tk = 6, c.mask = MaskKind::kPerBatch; });
  add("mask_shared_bias_per_head",
      [](Case& c) { c.Tk = 6, c.mask = MaskKind::kShared, c.bias = BiasKind::kPerHead; });
  add("bias_full_causal",
      [](Case& c) { c.Hq = 4, c.Hkv = 1, c.causal = true, c.bias = BiasKind::kFull; });
  add("dv_ne_d", [](Case& c) { c.Hq = 4, c.Hkv = 2, c.D = 8, c.Dv = 5, c.causal = true; });
  add("custom_scale", [](Case& c) { c.scale = 0.3; });
  add("length_one", [](Case& c) { c.Tq = c.Tk = 1, c.causal = true; });
  add("odd_lengths", [](Case& c) {
    c.B = 1, c.Hq = 4, c.Hkv = 2, c.Tq = 7, c.Tk = 97, c.D = 16, c.causal = true,
    c.window_left = 31;
  });
  add("float32_everything", [](Case& c) {
    c.Hq = 4, c.Hkv = 2, c.Tq = 6, c.Tk = 9, c.causal = true, c.window_left = 4, c.sinks = true,
    c.mask = MaskKind::kPerBatch, c.bias = BiasKind::kFull, c.dtype = torch::kFloat;
  });
  add("bfloat16",
      [](Case& c) { c.Hq = 4, c.Hkv = 2, c.causal = true, c.dtype = torch::kBFloat16; });
  return cs;
}

class ReferenceAttentionSweep : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

TEST_P(ReferenceAttentionSweep, MatchesNaiveLoops) {
  const Case& c = GetParam();
  auto opt = torch::TensorOptions().dtype(c.dtype);
  torch::Tensor q = torch::randn({c.B, c.Hq, c.Tq, c.D}, opt);
  torch::Tensor k = torch::randn({c.B, c.Hkv, c.Tk, c.D}, opt);
  torch::Tensor v = torch::randn({c.B, c.Hkv, c.Tk, c.Dv}, opt);
  DotProductAttentionOptions o;
  o.causal(c.causal).window_left(c.window_left).window_right(c.window_right).scale(c.scale);
  o.need_weights(true);
  if (c.sinks) o.sinks(torch::randn({c.Hq}, opt));
  if (c.mask == MaskKind::kPerBatch) o.mask(torch::rand({c.B, 1, c.Tq, c.Tk}) > 0.3);
  if (c.mask == MaskKind::kShared) o.mask(torch::rand({c.Tq, c.Tk}) > 0.3);
  if (c.bias == BiasKind::kPerHead) o.bias(torch::randn({1, c.Hq, c.Tq, c.Tk}, opt));
  if (c.bias == BiasKind::kFull) o.bias(torch::randn({c.B, c.Hq, c.Tq, c.Tk}, opt));

  AttentionResult r = reference_attention(q, k, v, o);
  Naive n = naive_attention(q, k, v, o);

  const double rtol = c.dtype == torch::kDouble ? 1e-12 : c.dtype == torch::kFloat ? 1e-5 : 1e-2;
  const double atol = c.dtype == torch::kDouble ? 1e-12 : c.dtype == torch::kFloat ? 1e-6 : 1e-2;
  const double lse_tol = c.dtype == torch::kDouble ? 1e-12 : 1e-5;
  ASSERT_EQ(r.output.scalar_type(), c.dtype);
  ASSERT_EQ(r.weights.scalar_type(), c.dtype);
  ASSERT_EQ(r.lse.scalar_type(), c.dtype == torch::kDouble ? torch::kDouble : torch::kFloat);
  EXPECT_TRUE(close(r.output, n.output, rtol, atol));
  EXPECT_TRUE(close(r.lse, n.lse, lse_tol, lse_tol));
  EXPECT_TRUE(close(r.weights, n.weights, rtol, atol));
  // Without need_weights nothing changes but the weights are not returned.
  o.need_weights(false);
  AttentionResult r2 = reference_attention(q, k, v, o);
  EXPECT_FALSE(r2.weights.defined());
  EXPECT_TRUE(torch::equal(r2.output, r.output));
}

INSTANTIATE_TEST_SUITE_P(Cases,
                         ReferenceAttentionSweep,
                         ::testing::ValuesIn(sweep_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// --- targeted checks -------------------------------------------------------------------------

TEST_F(ReferenceAttentionTest, QueryHeadReadsKvHeadIntegerDivision) {
  // Hq = 4, Hkv = 2: query heads 0, 1 read kv head 0 and heads 2, 3 read kv head 1 (not 0, 1, 0,
  // 1).
  torch::Tensor q = torch::randn({1, 4, 3, 8});
  torch::Tensor k = torch::randn({1, 2, 5, 8});
  torch::Tensor v = torch::randn({1, 2, 5, 8});
  v[0][1].zero_();
  torch::Tensor out = reference_attention(q, k, v).output;
  EXPECT_GT(out[0][0].abs().max().item<double>(), 0.0);
  EXPECT_GT(out[0][1].abs().max().item<double>(), 0.0);
  EXPECT_EQ(out[0][2].abs().max().item<double>(), 0.0);
  EXPECT_EQ(out[0][3].abs().max().item<double>(), 0.0);
}

// Sliding-window edges through the weights: key j is visible iff pos - left <= j <= pos + right.
TEST_F(ReferenceAttentionTest, WindowEdgesAreExact) {
  struct Window {
    int64_t Tq, Tk, left;
    std::optional<int64_t> right;  // unset = causal
  };
  for (const Window& w : std::vector<Window>{
           {12, 12, 3, std::nullopt}, {3, 8, 2, std::nullopt}, {10, 10, 1, 2}, {10, 10, 0, 0}}) {
    SCOPED_TRACE("Tq=" + std::to_string(w.Tq) + " Tk=" + std::to_string(w.Tk) +
                 " left=" + std::to_string(w.left));
    DotProductAttentionOptions o;
    o.window_left(w.left).need_weights(true);
    if (w.right) {
      o.window_right(*w.right);
    } else {
      o.causal(true);
    }
    const int64_t right = w.right.value_or(0);
    torch::Tensor q = torch::randn({1, 1, w.Tq, 4}, torch::kDouble);
    torch::Tensor k = torch::randn({1, 1, w.Tk, 4}, torch::kDouble);
    torch::Tensor weights = reference_attention(q, k, k, o).weights[0][0];
    auto wa = weights.accessor<double, 2>();
    for (int64_t i = 0; i < w.Tq; ++i) {
      const int64_t pos = i + w.Tk - w.Tq;
      for (int64_t j = 0; j < w.Tk; ++j) {
        const bool visible = pos - w.left <= j && j <= pos + right;
        if (visible) {
          EXPECT_GT(wa[i][j], 0.0) << "i=" << i << " j=" << j;
        } else {
          EXPECT_EQ(wa[i][j], 0.0) << "i=" << i << " j=" << j;
        }
      }
      // The two edges named explicitly.
      if (pos - w.left >= 0) {
        EXPECT_GT(wa[i][pos - w.left], 0.0);
      }
      if (pos - w.left - 1 >= 0) {
        EXPECT_EQ(wa[i][pos - w.left - 1], 0.0);
      }
      if (pos + right < w.Tk) {
        EXPECT_GT(wa[i][pos + right], 0.0);
      }
      if (pos + right + 1 < w.Tk) {
        EXPECT_EQ(wa[i][pos + right + 1], 0.0);
      }
    }
  }
}

TEST_F(ReferenceAttentionTest, MinusInfinitySinkEqualsNoSink) {
  torch::Tensor q = torch::randn({2, 4, 5, 8});
  torch::Tensor k = torch::randn({2, 2, 5, 8});
  torch::Tensor v = torch::randn({2, 2, 5, 8});
  auto o = DotProductAttentionOptions().causal(true);
  AttentionResult plain = reference_attention(q, k, v, o);
  AttentionResult sunk = reference_attention(q, k, v, o.sinks(torch::full({4}, -kInf)));
  EXPECT_TRUE(torch::allclose(plain.output, sunk.output, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(plain.lse, sunk.lse, 1e-6, 1e-7));
}

TEST_F(ReferenceAttentionTest, HugeSinkDrivesOutputToZero) {
  torch::Tensor q = torch::randn({1, 2, 4, 8});
  torch::Tensor k = torch::randn({1, 2, 6, 8});
  torch::Tensor v = torch::randn({1, 2, 6, 8}) + 3;  // keep the output away from zero otherwise
  auto o = DotProductAttentionOptions().sinks(torch::tensor({1e4f, 0.0f})).need_weights(true);
  AttentionResult r = reference_attention(q, k, v, o);
  EXPECT_LT(r.output[0][0].abs().max().item<double>(), 1e-6);
  EXPECT_LT(r.weights[0][0].max().item<double>(), 1e-6);
  EXPECT_GT(r.output[0][1].abs().max().item<double>(), 0.1);  // head 1's sink is moderate
  EXPECT_TRUE(torch::allclose(r.lse[0][0], torch::full({4}, 1e4f), 1e-6, 1e-3));
}

// A sink adds exp(sink) to the denominator; unlike the logits it is not multiplied by the scale.
TEST_F(ReferenceAttentionTest, ModerateSinkAddsExpSinkToDenominatorUnscaled) {
  torch::Tensor q = torch::randn({1, 2, 3, 4}, torch::kDouble);
  torch::Tensor k = torch::randn({1, 2, 5, 4}, torch::kDouble);
  torch::Tensor v = torch::randn({1, 2, 5, 6}, torch::kDouble);
  torch::Tensor sinks = torch::tensor({1.5, -0.5}, torch::kDouble);
  const double scale = 0.25;
  AttentionResult r =
      reference_attention(q, k, v, DotProductAttentionOptions().scale(scale).sinks(sinks));
  torch::Tensor e = torch::exp(torch::matmul(q, k.transpose(-1, -2)) * scale);  // [1, 2, 3, 5]
  torch::Tensor denom = e.sum(-1, true) + torch::exp(sinks).view({1, 2, 1, 1});
  EXPECT_TRUE(torch::allclose(r.output, torch::matmul(e / denom, v), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(r.lse, torch::log(denom).squeeze(-1), 1e-12, 1e-12));
  // A scaled sink would be a different answer.
  torch::Tensor denom_scaled = e.sum(-1, true) + torch::exp(sinks * scale).view({1, 2, 1, 1});
  EXPECT_FALSE(torch::allclose(r.output, torch::matmul(e / denom_scaled, v), 1e-6, 1e-6));
}

TEST_F(ReferenceAttentionTest, WeightRowsSumToOneAndMaskedRowsToZero) {
  torch::Tensor q = torch::randn({2, 2, 6, 8});
  torch::Tensor k = torch::randn({2, 2, 7, 8});
  torch::Tensor mask = torch::rand({2, 2, 6, 7}) > 0.4;
  mask[1][0][3].fill_(false);  // one fully masked row
  mask[0][1][0].fill_(false);  // and another
  mask[0][0][2].fill_(true);   // and a fully visible one
  auto o = DotProductAttentionOptions().mask(mask).bias(torch::randn({6, 7})).need_weights(true);
  torch::Tensor sums = reference_attention(q, k, k, o).weights.sum(-1);
  torch::Tensor empty = mask.logical_not().all(-1);
  ASSERT_GE(empty.sum().item<int64_t>(), 2);
  EXPECT_TRUE(torch::equal(sums.masked_select(empty), torch::zeros({empty.sum().item<int64_t>()})));
  torch::Tensor live = sums.masked_select(empty.logical_not());
  EXPECT_TRUE(torch::allclose(live, torch::ones_like(live), 1e-6, 1e-6));
  // With a sink, the rows sum to 1 minus the sink's share.
  torch::Tensor sink_sums =
      reference_attention(q, k, k, o.mask(torch::Tensor()).sinks(torch::zeros({2})))
          .weights.sum(-1);
  EXPECT_TRUE((sink_sums < 1 - 1e-3).all().item<bool>());
}

TEST_F(ReferenceAttentionTest, FullyMaskedRowGivesZerosMinusInfLseAndFiniteGrads) {
  for (bool with_sink : {false, true}) {
    SCOPED_TRACE(with_sink ? "with sink" : "no sink");
    torch::Tensor q = torch::randn({1, 2, 4, 8}, torch::requires_grad());
    torch::Tensor k = torch::randn({1, 2, 6, 8}, torch::requires_grad());
    torch::Tensor v = torch::randn({1, 2, 6, 8}, torch::requires_grad());
    torch::Tensor sinks = torch::tensor({0.5f, -1.0f}).requires_grad_(true);
    torch::Tensor mask = torch::ones({1, 2, 4, 6}, torch::kBool);
    mask[0][1][2].fill_(false);
    auto o = DotProductAttentionOptions().mask(mask).bias(torch::randn({4, 6}));
    if (with_sink) o.sinks(sinks);
    AttentionResult r = reference_attention(q, k, v, o);
    EXPECT_FALSE(torch::isnan(r.output).any().item<bool>());
    EXPECT_TRUE(torch::equal(r.output[0][1][2], torch::zeros({8})));
    if (with_sink) {
      // Only the sink is left: lse = sink, and the output is still zero.
      EXPECT_FLOAT_EQ(r.lse[0][1][2].item<float>(), -1.0f);
    } else {
      EXPECT_EQ(r.lse[0][1][2].item<float>(), -std::numeric_limits<float>::infinity());
    }
    EXPECT_TRUE(torch::isfinite(r.lse[0][0]).all().item<bool>());
    r.output.sum().backward();
    for (const torch::Tensor& t : {q, k, v}) {
      ASSERT_TRUE(t.grad().defined());
      EXPECT_TRUE(torch::isfinite(t.grad()).all().item<bool>());
    }
    // The masked query row receives no gradient.
    EXPECT_TRUE(torch::equal(q.grad()[0][1][2], torch::zeros({8})));
    if (with_sink) {
      EXPECT_TRUE(torch::isfinite(sinks.grad()).all().item<bool>());
    }
  }
  // Rows masked by causality alone (Tq > Tk): same contract.
  torch::Tensor q = torch::randn({1, 1, 5, 4}, torch::requires_grad());
  torch::Tensor k = torch::randn({1, 1, 3, 4}, torch::requires_grad());
  AttentionResult r = reference_attention(q, k, k, DotProductAttentionOptions().causal(true));
  EXPECT_TRUE(torch::equal(r.output[0][0].narrow(0, 0, 2), torch::zeros({2, 4})));
  EXPECT_TRUE(torch::isneginf(r.lse[0][0].narrow(0, 0, 2)).all().item<bool>());
  r.output.sum().backward();
  EXPECT_TRUE(torch::isfinite(q.grad()).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(k.grad()).all().item<bool>());
}

// Gradients of q, k, v, bias and sinks vs autograd through a small composition of torch ops.
TEST_F(ReferenceAttentionTest, GradientsMatchComposedReference) {
  const int64_t Hq = 4, Hkv = 2, Tq = 5, Tk = 7;
  auto f64 = torch::dtype(torch::kDouble);
  torch::Tensor q = torch::randn({2, Hq, Tq, 6}, f64);
  torch::Tensor k = torch::randn({2, Hkv, Tk, 6}, f64);
  torch::Tensor v = torch::randn({2, Hkv, Tk, 3}, f64);
  torch::Tensor bias = torch::randn({Tq, Tk}, f64);
  torch::Tensor sinks = torch::randn({Hq}, f64);
  torch::Tensor upstream = torch::randn({2, Hq, Tq, 3}, f64);
  const int64_t window = 3;

  std::vector<torch::Tensor> ours = {q, k, v, bias, sinks};
  for (auto& t : ours) t = t.clone().requires_grad_(true);
  auto o =
      DotProductAttentionOptions().causal(true).window_left(window).bias(ours[3]).sinks(ours[4]);
  (reference_attention(ours[0], ours[1], ours[2], o).output * upstream).sum().backward();

  std::vector<torch::Tensor> theirs = {q, k, v, bias, sinks};
  for (auto& t : theirs) t = t.clone().requires_grad_(true);
  torch::Tensor kr = theirs[1].repeat_interleave(Hq / Hkv, 1);
  torch::Tensor vr = theirs[2].repeat_interleave(Hq / Hkv, 1);
  torch::Tensor logits =
      torch::matmul(theirs[0], kr.transpose(-1, -2)) / std::sqrt(6.0) + theirs[3];
  torch::Tensor i = torch::arange(Tq).view({Tq, 1}) + (Tk - Tq);
  torch::Tensor j = torch::arange(Tk).view({1, Tk});
  torch::Tensor keep = (j <= i) & (j >= i - window);
  logits = logits.masked_fill(keep.logical_not(), -kInf);
  torch::Tensor sink_col = theirs[4].view({1, Hq, 1, 1}).expand({2, Hq, Tq, 1});
  torch::Tensor p = torch::softmax(torch::cat({logits, sink_col}, -1), -1).narrow(-1, 0, Tk);
  (torch::matmul(p, vr) * upstream).sum().backward();

  const char* names[] = {"q", "k", "v", "bias", "sinks"};
  for (size_t n = 0; n < ours.size(); ++n) {
    EXPECT_TRUE(torch::allclose(ours[n].grad(), theirs[n].grad(), 1e-10, 1e-12)) << names[n];
  }
}

TEST_F(ReferenceAttentionTest, LseIsLogSumExpOfScaledVisibleLogits) {
  const int64_t Tq = 6, Tk = 9;
  torch::Tensor q = torch::randn({2, 4, Tq, 8}, torch::kDouble);
  torch::Tensor k = torch::randn({2, 1, Tk, 8}, torch::kDouble);
  torch::Tensor mask = torch::rand({2, 1, Tq, Tk}) > 0.2;
  auto o = DotProductAttentionOptions().scale(0.4).causal(true).window_left(5).mask(mask);
  torch::Tensor lse = reference_attention(q, k, k, o).lse;
  torch::Tensor logits = torch::matmul(q, k.transpose(-1, -2)) * 0.4;  // k broadcasts over heads
  torch::Tensor i = torch::arange(Tq).view({Tq, 1}) + (Tk - Tq);
  torch::Tensor j = torch::arange(Tk).view({1, Tk});
  torch::Tensor keep = (j <= i) & (j >= i - 5) & mask;
  torch::Tensor expected = torch::logsumexp(logits.masked_fill(keep.logical_not(), -kInf), -1);
  EXPECT_TRUE(close(lse, expected, 1e-12, 1e-12));
}

TEST_F(ReferenceAttentionTest, Float64StaysFloat64) {
  torch::Tensor q = torch::randn({1, 2, 3, 4}, torch::kDouble);
  AttentionResult r = reference_attention(q, q, q, DotProductAttentionOptions().need_weights(true));
  EXPECT_EQ(r.output.scalar_type(), torch::kDouble);
  EXPECT_EQ(r.lse.scalar_type(), torch::kDouble);
  EXPECT_EQ(r.weights.scalar_type(), torch::kDouble);
  // Float math would be off by ~1e-7; double agrees with the loops to ~1e-15.
  EXPECT_TRUE(close(r.output, naive_attention(q, q, q, {}).output, 1e-14, 1e-14));
}

TEST_F(ReferenceAttentionTest, DropoutChangesOutputAndIsReproducibleWithSeed) {
  torch::Tensor q = torch::randn({2, 2, 6, 8});
  torch::Tensor k = torch::randn({2, 2, 6, 8});
  torch::Tensor v = torch::randn({2, 2, 6, 8});
  auto o = DotProductAttentionOptions().causal(true);
  torch::Tensor no_dropout = reference_attention(q, k, v, o).output;
  o.dropout(0.4);
  torch::manual_seed(123);
  AttentionResult a = reference_attention(q, k, v, o);
  torch::manual_seed(123);
  AttentionResult b = reference_attention(q, k, v, o);
  torch::manual_seed(124);
  AttentionResult c = reference_attention(q, k, v, o);
  EXPECT_FALSE(torch::allclose(a.output, no_dropout, 1e-3, 1e-3));
  EXPECT_TRUE(torch::equal(a.output, b.output));
  EXPECT_FALSE(torch::equal(a.output, c.output));
  // Dropout acts on the weights only: the normaliser is unchanged.
  EXPECT_TRUE(torch::allclose(a.lse, reference_attention(q, k, v, o.dropout(0)).lse));
}

TEST_F(ReferenceAttentionTest, ErrorsNameTheArgument) {
  torch::Tensor q = torch::randn({1, 4, 3, 8});
  torch::Tensor k = torch::randn({1, 2, 5, 8});
  torch::Tensor v = torch::randn({1, 2, 5, 8});
  auto fails_with = [](const char* what) {
    return ThrowsMessage<c10::Error>(AllOf(HasSubstr("reference_attention"), HasSubstr(what)));
  };
  EXPECT_THAT(
      [&] {
        reference_attention(q, torch::randn({1, 2, 5, 6}), v);
      },
      fails_with("head_dim"));
  EXPECT_THAT(
      [&] {
        reference_attention(torch::randn({1, 3, 3, 8}), k, v);
      },
      fails_with("divisible"));
  EXPECT_THAT(
      [&] {
        reference_attention(q, k, v,
                            DotProductAttentionOptions().mask(torch::ones({3, 6}, torch::kBool)));
      },
      ThrowsMessage<c10::Error>(AllOf(HasSubstr("mask"), HasSubstr("broadcastable"))));
  EXPECT_THAT(
      [&] {
        reference_attention(
            q, k, v, DotProductAttentionOptions().mask(torch::ones({2, 4, 3, 5}, torch::kBool)));
      },
      fails_with("mask"));
  EXPECT_THAT(
      [&] {
        reference_attention(q, k, v, DotProductAttentionOptions().mask(torch::ones({3, 5})));
      },
      fails_with("bool mask"));
  EXPECT_THAT(
      [&] { reference_attention(q, k, v, DotProductAttentionOptions().sinks(torch::zeros({2}))); },
      fails_with("sinks"));
  EXPECT_THAT(
      [&] {
        reference_attention(q, k, v, DotProductAttentionOptions().sinks(torch::zeros({1, 4})));
      },
      fails_with("sinks"));
  EXPECT_THAT(
      [&] {
        reference_attention(torch::ones({1, 4, 3, 8}, torch::kLong),
                            torch::ones({1, 2, 5, 8}, torch::kLong),
                            torch::ones({1, 2, 5, 8}, torch::kLong));
      },
      fails_with("floating-point"));
  EXPECT_THAT([&] { reference_attention(q, k, v, DotProductAttentionOptions().window_left(-1)); },
              fails_with("window_left"));
  EXPECT_THAT([&] { reference_attention(q, k, v, DotProductAttentionOptions().dropout(1.0)); },
              fails_with("dropout"));
}

}  // namespace
