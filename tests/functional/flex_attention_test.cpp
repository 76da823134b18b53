// flex_attention: the FlexAttention programming model (block masks, mask and score functors,
// softcap, ALiBi), its gradients, and the routing of dot_product_attention.

#include "support/pch.h"
#include "support/tolerance.h"

namespace attnkit {
namespace {

using namespace functional;  // NOLINT
using testing::EnvGuard;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

// Compares the fused output on every ISA path with the composed reference in float64.
void expect_matches_reference(const torch::Tensor& q,
                              const torch::Tensor& k,
                              const torch::Tensor& v,
                              const FlexAttentionOptions& o) {
  FlexAttentionOptions od = o;
  if (o.sinks().defined()) od.sinks(o.sinks().to(torch::kDouble));
  if (o.bias().defined()) od.bias(o.bias().to(torch::kDouble));
  FlexAttentionResult expected = flex_attention_reference(
      q.to(torch::kDouble), k.to(torch::kDouble), v.to(torch::kDouble), od);
  const testing::Tolerance tol = testing::tolerance_for(q.scalar_type());
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    FlexAttentionResult r = flex_attention(q, k, v, o);
    EXPECT_FALSE(r.output.isnan().any().item<bool>());
    EXPECT_TRUE(torch::allclose(r.output.to(torch::kDouble), expected.output, tol.rtol, tol.atol))
        << "max abs diff "
        << (r.output.to(torch::kDouble) - expected.output).abs().max().item<double>();
    torch::Tensor finite = torch::isfinite(expected.lse);
    EXPECT_TRUE(torch::equal(torch::isfinite(r.lse), finite));
  }
}

struct Inputs {
  torch::Tensor q, k, v;
};

Inputs random_inputs(int64_t B,
                     int64_t Hq,
                     int64_t Hkv,
                     int64_t Tq,
                     int64_t Tk,
                     int64_t D,
                     int64_t Dv,
                     torch::ScalarType dtype = torch::kFloat) {
  torch::manual_seed(7);
  return {torch::randn({B, Hq, Tq, D}).to(dtype), torch::randn({B, Hkv, Tk, D}).to(dtype),
          torch::randn({B, Hkv, Tk, Dv}).to(dtype)};
}

TEST(FlexAttention, ComposedReferenceMatchesReferenceAttention) {
  Inputs in = random_inputs(2, 4, 2, 9, 13, 16, 8);
  torch::Tensor sinks = torch::randn({4}), bias = torch::randn({4, 9, 13});
  auto a = flex_attention_reference(in.q, in.k, in.v,
                                    FlexAttentionOptions().causal(true).sinks(sinks).bias(bias));
  auto b = reference_attention(in.q, in.k, in.v,
                               DotProductAttentionOptions().causal(true).sinks(sinks).bias(bias));
  EXPECT_TRUE(torch::allclose(a.output, b.output, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(a.lse, b.lse, 1e-6, 1e-6));
}

TEST(FlexAttention, Softcap) {
  Inputs in = random_inputs(1, 4, 2, 97, 97, 64, 64);
  expect_matches_reference(in.q * 4, in.k * 4, in.v,
                           FlexAttentionOptions().softcap(5.0).causal(true));
}

TEST(FlexAttention, Alibi) {
  Inputs in = random_inputs(1, 8, 8, 97, 130, 32, 32);
  torch::Tensor slopes = torch::pow(2.0, -torch::arange(1, 9, torch::kFloat));
  expect_matches_reference(in.q, in.k, in.v,
                           FlexAttentionOptions().alibi_slopes(slopes).causal(true));
}

TEST(FlexAttention, SoftcapAlibiSinksBiasTogether) {
  Inputs in = random_inputs(2, 4, 1, 33, 70, 80, 48);
  torch::Tensor slopes = torch::rand({4}) * 0.1;
  expect_matches_reference(in.q, in.k, in.v,
                           FlexAttentionOptions()
                               .softcap(20.0)
                               .alibi_slopes(slopes)
                               .sinks(torch::randn({4}))
                               .bias(torch::randn({2, 1, 33, 70}))
                               .window_left(20));
}

TEST(FlexAttention, ScoreModAndMaskMod) {
  Inputs in = random_inputs(1, 2, 1, 40, 50, 32, 32);
  auto o = FlexAttentionOptions()
               .score_mod([](float s, int64_t, int64_t h, int64_t q, int64_t kv) {
                 return s + 0.1f * static_cast<float>(h) - 0.01f * static_cast<float>(q - kv);
               })
               .mask_mod([](int64_t, int64_t h, int64_t q, int64_t kv) {
                 return (q + kv + h) % 3 != 0 && q != 5;  // row 5 fully masked
               });
  expect_matches_reference(in.q, in.k, in.v, o);
}

// --- template functors (inlined row hooks) against std::function and the reference -------------

// A mask and a score modifier as plain lambdas (inlined) and as std::functions (type-erased).
struct FunctorPair {
  Mask mask_inlined, mask_erased;
  ScoreModFn score_inlined, score_erased;
};

FunctorPair test_functors() {
  auto mask = [](int64_t b, int64_t h, int64_t q, int64_t kv) {
    return kv <= q + 3 && (q + 2 * kv + h + b) % 5 != 0 && q != 11;  // row 11 fully masked
  };
  auto score = [](float s, int64_t, int64_t h, int64_t q, int64_t kv) {
    return s + 0.2f * static_cast<float>(h) - 0.02f * static_cast<float>(q - kv);
  };
  return {mask_fn(mask), Mask(MaskMod(mask)), score_fn(score), ScoreModFn(ScoreMod(score))};
}

// Output and q, k, v gradients of flex_attention with `o` (fused, or the reference in float64).
std::vector<torch::Tensor> forward_backward(const Inputs& in,
                                            const torch::Tensor& dout,
                                            const FlexAttentionOptions& o,
                                            bool fused) {
  auto dt = fused ? torch::kFloat : torch::kDouble;
  torch::Tensor q = in.q.to(dt).detach().requires_grad_(true);
  torch::Tensor k = in.k.to(dt).detach().requires_grad_(true);
  torch::Tensor v = in.v.to(dt).detach().requires_grad_(true);
  torch::Tensor out =
      fused ? flex_attention(q, k, v, o).output : flex_attention_reference(q, k, v, o).output;
  (out.to(torch::kDouble) * dout).sum().backward();
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

TEST(FlexAttention, TemplateFunctorsEqualStdFunctionsAndTheReference) {
  Inputs in = random_inputs(2, 4, 2, 70, 90, 32, 24);
  torch::Tensor dout = torch::randn({2, 4, 70, 24}, torch::kDouble);
  FunctorPair f = test_functors();
  const std::vector<std::pair<FlexAttentionOptions, FlexAttentionOptions>> cases = {
      {FlexAttentionOptions().mask_mod(f.mask_inlined),
       FlexAttentionOptions().mask_mod(f.mask_erased)},
      {FlexAttentionOptions().score_mod(f.score_inlined).causal(true),
       FlexAttentionOptions().score_mod(f.score_erased).causal(true)},
      {FlexAttentionOptions().mask_mod(f.mask_inlined).score_mod(f.score_inlined),
       FlexAttentionOptions().mask_mod(f.mask_erased).score_mod(f.score_erased)}};
  for (size_t n = 0; n < cases.size(); ++n) {
    SCOPED_TRACE(n);
    const std::vector<torch::Tensor> expected =
        forward_backward(in, dout, cases[n].first, /*fused=*/false);
    for (const char* isa : testing::isa_paths()) {
      SCOPED_TRACE(isa);
      EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
      const std::vector<torch::Tensor> inlined = forward_backward(in, dout, cases[n].first, true);
      const std::vector<torch::Tensor> erased = forward_backward(in, dout, cases[n].second, true);
      for (size_t t = 0; t < inlined.size(); ++t) {
        SCOPED_TRACE(t);  // 0 output, 1 dq, 2 dk, 3 dv
        EXPECT_TRUE(torch::equal(inlined[t], erased[t]));
        EXPECT_TRUE(torch::allclose(inlined[t].to(torch::kDouble), expected[t], 1e-4, 1e-4))
            << "max abs diff "
            << (inlined[t].to(torch::kDouble) - expected[t]).abs().max().item<double>();
      }
      if (n != 1) {  // the mask hides row 11 entirely: zeros, not NaN
        EXPECT_EQ(inlined[0].slice(2, 11, 12).abs().max().item<float>(), 0.0f);
      }
    }
  }
}

TEST(FlexAttention, BlockMasksFromTemplateMasks) {
  const int64_t Tq = 150, Tk = 190;
  Inputs in = random_inputs(1, 4, 2, Tq, Tk, 32, 32);
  FunctorPair f = test_functors();
  BlockMask inlined = create_block_mask(f.mask_inlined, 1, 4, Tq, Tk, 32, 32);
  BlockMask erased = create_block_mask(f.mask_erased, 1, 4, Tq, Tk, 32, 32);
  EXPECT_TRUE(torch::equal(inlined.to_dense(), erased.to_dense()));
  EXPECT_GT((inlined.to_dense() == 0).sum().item<int64_t>(), 0);  // some blocks are skipped
  // A template predicate combined with a classified helper, against element-wise creation.
  Mask docs_causal =
      and_masks(causal_mask(Tk - Tq),
                mask_fn([](int64_t, int64_t, int64_t q, int64_t kv) { return q / 40 == kv / 50; }));
  BlockMask combined = create_block_mask(docs_causal, 1, 1, Tq, Tk, 32, 32);
  BlockMask slow = create_block_mask(Mask(docs_causal.fn), 1, 1, Tq, Tk, 32, 32);
  EXPECT_TRUE(torch::equal(combined.to_dense(), slow.to_dense()));
  for (const BlockMask* bm : {&inlined, &combined}) {
    expect_matches_reference(in.q, in.k, in.v, FlexAttentionOptions().block_mask(*bm));
  }
  torch::Tensor dout = torch::randn({1, 4, Tq, 32}, torch::kDouble);
  auto o = FlexAttentionOptions().block_mask(inlined).score_mod(f.score_inlined);
  const std::vector<torch::Tensor> expected = forward_backward(in, dout, o, /*fused=*/false);
  const std::vector<torch::Tensor> got = forward_backward(in, dout, o, /*fused=*/true);
  for (size_t t = 0; t < got.size(); ++t) {
    EXPECT_TRUE(torch::allclose(got[t].to(torch::kDouble), expected[t], 1e-4, 1e-4)) << t;
  }
}

TEST(FlexAttention, BlockMaskHelpersMatchElementwiseCreation) {
  const int64_t T = 300;
  torch::Tensor docs = torch::cat({torch::zeros({70}), torch::ones({100}), torch::full({130}, 2)});
  std::vector<Mask> masks = {causal_mask(),
                             sliding_window_mask(50, 10),
                             sink_window_mask(4, 64),
                             document_mask(docs),
                             and_masks(causal_mask(), document_mask(docs)),
                             or_masks(sliding_window_mask(16), sink_window_mask(1, 0))};
  for (size_t n = 0; n < masks.size(); ++n) {
    SCOPED_TRACE(n);
    BlockMask fast = create_block_mask(masks[n], 1, 1, T, T, 64, 32);
    BlockMask slow = create_block_mask(Mask(masks[n].fn), 1, 1, T, T, 64, 32);
    EXPECT_TRUE(torch::equal(fast.to_dense(), slow.to_dense()));
  }
  BlockMask causal = create_block_mask(causal_mask(), 1, 1, 256, 256, 64, 64);
  EXPECT_DOUBLE_EQ(causal.density(), 10.0 / 16.0);
}

TEST(FlexAttention, BlockMasksAgainstReference) {
  Inputs in = random_inputs(2, 4, 2, 200, 200, 64, 64);
  const int64_t T = 200;
  torch::Tensor docs = torch::cat({torch::zeros({60}), torch::ones({90}), torch::full({50}, 2)});
  for (int64_t block : {32, 64, 128}) {
    SCOPED_TRACE(block);
    expect_matches_reference(in.q, in.k, in.v,
                             FlexAttentionOptions().block_mask(
                                 create_block_mask(causal_mask(), 1, 1, T, T, block, block)));
    expect_matches_reference(
        in.q, in.k, in.v,
        FlexAttentionOptions().block_mask(create_block_mask(
            and_masks(causal_mask(), document_mask(docs)), 1, 1, T, T, block, block)));
    expect_matches_reference(in.q, in.k, in.v,
                             FlexAttentionOptions().block_mask(create_block_mask(
                                 sink_window_mask(3, 40), 1, 1, T, T, block, 32)));
  }
}

TEST(FlexAttention, RandomBlockMasksWithFullyMaskedRows) {
  // Per (batch, head) random block lists: some query blocks visit nothing (zeros, lse -inf),
  // heads of one GQA group differ.
  Inputs in = random_inputs(2, 4, 2, 150, 170, 32, 48);
  torch::manual_seed(11);
  const int64_t bq = 32, bk = 32, nqb = 5, nkb = 6;
  torch::Tensor kinds = torch::randint(0, 3, {2, 4, nqb, nkb}, torch::kInt);
  kinds.select(2, 1).zero_();  // query block 1 sees nothing
  BlockMask bm;
  bm.block_q = bq, bm.block_k = bk, bm.seq_len_q = 150, bm.seq_len_kv = 170;
  bm.kv_num_blocks = torch::zeros({2, 4, nqb}, torch::kInt);
  bm.kv_indices = torch::zeros({2, 4, nqb, nkb}, torch::kInt);
  bm.full_kv_num_blocks = torch::zeros({2, 4, nqb}, torch::kInt);
  bm.full_kv_indices = torch::zeros({2, 4, nqb, nkb}, torch::kInt);
  auto kd = kinds.accessor<int32_t, 4>();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t qb = 0; qb < nqb; ++qb)
        for (int64_t kb = 0; kb < nkb; ++kb) {
          if (kd[b][h][qb][kb] == 1) {
            const int32_t n = bm.kv_num_blocks[b][h][qb].item<int32_t>();
            bm.kv_indices[b][h][qb][n] = static_cast<int32_t>(kb);
            bm.kv_num_blocks[b][h][qb] = n + 1;
          } else if (kd[b][h][qb][kb] == 2) {
            const int32_t n = bm.full_kv_num_blocks[b][h][qb].item<int32_t>();
            bm.full_kv_indices[b][h][qb][n] = static_cast<int32_t>(kb);
            bm.full_kv_num_blocks[b][h][qb] = n + 1;
          }
        }
  bm.mask_mod = [](int64_t b, int64_t h, int64_t q, int64_t kv) {
    return (q * 7 + kv + b + h) % 5 != 0;
  };
  FlexAttentionOptions o = FlexAttentionOptions().block_mask(bm);
  expect_matches_reference(in.q, in.k, in.v, o);
  FlexAttentionResult r = flex_attention(in.q, in.k, in.v, o);
  EXPECT_TRUE(torch::equal(r.output.slice(2, 32, 64), torch::zeros({2, 4, 32, 48})));
  EXPECT_TRUE(torch::isneginf(r.lse.slice(2, 32, 64)).all().item<bool>());
  expect_matches_reference(in.q.to(torch::kBFloat16), in.k.to(torch::kBFloat16),
                           in.v.to(torch::kBFloat16), o);
}

TEST(FlexAttention, ErrorsNameFunctionArgumentAndValues) {
  Inputs in = random_inputs(1, 4, 2, 8, 8, 16, 16);
  EXPECT_THAT([&] { flex_attention(in.q, in.k, in.v, FlexAttentionOptions().softcap(-1)); },
              ThrowsMessage<c10::Error>(HasSubstr("flex_attention: softcap must be >= 0")));
  EXPECT_THAT(
      [&] {
        flex_attention(in.q, in.k, in.v, FlexAttentionOptions().alibi_slopes(torch::ones({3})));
      },
      ThrowsMessage<c10::Error>(HasSubstr("expected alibi_slopes of shape [Hq] = [4], got [3]")));
  EXPECT_THAT(
      [&] {
        flex_attention(in.q, in.k.slice(1, 0, 1).expand({1, 3, 8, 16}), in.v);
      },
      ThrowsMessage<c10::Error>(HasSubstr("flex_attention")));
  BlockMask bm = create_block_mask(causal_mask(), 1, 1, 16, 16, 8, 8);
  EXPECT_THAT(
      [&] { flex_attention(in.q, in.k, in.v, FlexAttentionOptions().block_mask(bm)); },
      ThrowsMessage<c10::Error>(HasSubstr("block_mask built for (Tq, Tk) = (8, 8), got (16, 16)")));
  EnvGuard guard("ATTNKIT_BACKEND", "fast");
  EXPECT_THAT([&] { flex_attention(in.q, in.k, in.v); },
              ThrowsMessage<c10::Error>(HasSubstr("ATTNKIT_BACKEND must be reference or fused")));
}

TEST(FlexAttention, DotProductAttentionRoutesToFusedAndReference) {
  Inputs in = random_inputs(1, 4, 2, 20, 20, 16, 16);
  auto o = DotProductAttentionOptions().causal(true);
  AttentionResult fused = dot_product_attention(in.q, in.k, in.v, o);
  AttentionResult ref;
  {
    EnvGuard guard("ATTNKIT_BACKEND", "reference");
    ref = dot_product_attention(in.q, in.k, in.v, o);
  }
  EXPECT_TRUE(torch::allclose(fused.output, ref.output, 1e-5, 1e-5));
  AttentionResult weights = dot_product_attention(in.q, in.k, in.v, o.need_weights(true));
  EXPECT_TRUE(weights.weights.defined());
}

TEST(FlexAttention, BlockMaskFromKeepClassifiesBlocks) {
  // 6 x 5 keep mask in blocks of 4 x 2: rows 0-3 / 4-5, columns 0-1 / 2-3 / 4.
  torch::Tensor keep = torch::zeros({6, 5}, torch::kBool);
  keep.slice(0, 0, 4).slice(1, 0, 2).fill_(true);  // block (0, 0) full
  keep[1][3] = true;                               // block (0, 1) partial
  keep.slice(0, 4, 6).slice(1, 4, 5).fill_(true);  // block (1, 2): 2 of 8 (padding) -> partial
  BlockMask bm = block_mask_from_keep(keep, 4, 2);
  torch::Tensor expected = torch::tensor({2, 1, 0, 0, 0, 1}, torch::kChar).view({1, 1, 2, 3});
  EXPECT_TRUE(torch::equal(bm.to_dense(), expected)) << bm.to_dense();
}

TEST(FlexAttention, DenseMasksOverLongSequencesSkipBlocksExactly) {
  // A block-structured keep mask (hidden, full and mixed 128-blocks, a fully hidden query row)
  // goes through the block-mask path of dot_product_attention; outputs and gradients must match
  // the reference.
  torch::manual_seed(3);
  Inputs in = random_inputs(2, 4, 2, 300, 300, 32, 32);
  torch::Tensor keep = torch::rand({2, 1, 300, 300}) > 0.5;
  keep.slice(2, 0, 128).slice(3, 128, 300).fill_(false);  // whole hidden blocks
  keep.slice(2, 128, 256).slice(3, 0, 128).fill_(true);   // a full block
  keep[0][0][7].fill_(false);                             // a fully hidden query
  auto o = DotProductAttentionOptions().mask(keep);
  auto run = [&](bool reference) {
    EnvGuard guard("ATTNKIT_BACKEND", reference ? "reference" : "fused");
    std::vector<torch::Tensor> leaves = {in.q.detach().requires_grad_(),
                                         in.k.detach().requires_grad_(),
                                         in.v.detach().requires_grad_()};
    torch::Tensor out = dot_product_attention(leaves[0], leaves[1], leaves[2], o).output;
    (out * torch::cos(out.detach() * 3)).sum().backward();
    return std::make_pair(out.detach(), leaves);
  };
  auto [fused, fused_leaves] = run(false);
  auto [ref, ref_leaves] = run(true);
  EXPECT_TRUE(torch::allclose(fused, ref, 1e-5, 1e-5));
  EXPECT_EQ(fused[0][0][7].abs().max().item<float>(), 0.0f);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::allclose(fused_leaves[i].grad(), ref_leaves[i].grad(), 1e-4, 1e-4)) << i;
  }
}

// --- gradients -----------------------------------------------------------------------------------

struct GradCase {
  bool causal;
  int64_t window_left;
  bool sinks, bias;
  double softcap;
  torch::ScalarType dtype;
};

class FlexGradients : public ::testing::TestWithParam<GradCase> {};

TEST_P(FlexGradients, MatchAutogradThroughTheReference) {
  const GradCase c = GetParam();
  Inputs in = random_inputs(2, 4, 2, 37, 145, 24, 16, c.dtype);
  torch::Tensor sinks = torch::randn({4});
  torch::Tensor bias = torch::randn({1, 4, 37, 145});
  torch::Tensor dout = torch::randn({2, 4, 37, 16});
  auto run = [&](bool fused, torch::ScalarType dt) {
    torch::Tensor q = in.q.to(dt).detach().requires_grad_(true);
    torch::Tensor k = in.k.to(dt).detach().requires_grad_(true);
    torch::Tensor v = in.v.to(dt).detach().requires_grad_(true);
    torch::Tensor s =
        sinks.to(dt == torch::kBFloat16 ? torch::kFloat : dt).detach().requires_grad_(true);
    torch::Tensor b =
        bias.to(dt == torch::kBFloat16 ? torch::kFloat : dt).detach().requires_grad_(true);
    FlexAttentionOptions o;
    o.causal(c.causal).softcap(c.softcap);
    if (c.window_left >= 0) o.window_left(c.window_left);
    if (c.sinks) o.sinks(s);
    if (c.bias) o.bias(b);
    torch::Tensor out =
        fused ? flex_attention(q, k, v, o).output : flex_attention_reference(q, k, v, o).output;
    (out.to(torch::kDouble) * dout.to(torch::kDouble)).sum().backward();
    std::vector<torch::Tensor> g = {q.grad(), k.grad(), v.grad()};
    if (c.sinks) g.push_back(s.grad());
    if (c.bias) g.push_back(b.grad());
    return g;
  };
  std::vector<torch::Tensor> expected = run(false, torch::kDouble);
  const double tol = c.dtype == torch::kBFloat16 ? 5e-2 : 1e-4;
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    std::vector<torch::Tensor> got = run(true, c.dtype);
    ASSERT_EQ(got.size(), expected.size());
    for (size_t n = 0; n < got.size(); ++n) {
      SCOPED_TRACE(n);
      ASSERT_TRUE(got[n].defined());
      EXPECT_TRUE(torch::allclose(got[n].to(torch::kDouble), expected[n], tol, tol))
          << "max abs diff "
          << (got[n].to(torch::kDouble) - expected[n]).abs().max().item<double>();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Functional,
                         FlexGradients,
                         ::testing::Values(GradCase{false, -1, false, false, 0.0, torch::kFloat},
                                           GradCase{true, -1, true, false, 0.0, torch::kFloat},
                                           GradCase{true, 10, false, true, 0.0, torch::kFloat},
                                           GradCase{false, -1, true, true, 3.0, torch::kFloat},
                                           GradCase{true, -1, true, true, 0.0, torch::kBFloat16}));

TEST(FlexGradients, LongerSequencesBlockMasksAlibiAndGqa8) {
  // Several kv tiles and query blocks, GQA ratio 8, Dv != D, a block mask with a mask_mod and
  // empty query blocks, ALiBi.
  torch::manual_seed(9);
  const int64_t Tq = 150, Tk = 190;
  torch::Tensor q0 = torch::randn({1, 8, Tq, 40}), k0 = torch::randn({1, 1, Tk, 40});
  torch::Tensor v0 = torch::randn({1, 1, Tk, 24}), dout = torch::randn({1, 8, Tq, 24});
  BlockMask bm = create_block_mask(
      and_masks(causal_mask(Tk - Tq), Mask([](int64_t, int64_t h, int64_t q, int64_t kv) {
                  return (q + kv + h) % 7 != 0 && !(q >= 32 && q < 64);
                })),
      1, 8, Tq, Tk, 32, 32);
  torch::Tensor slopes = torch::rand({8}) * 0.05;
  auto run = [&](bool fused) {
    auto dt = fused ? torch::kFloat : torch::kDouble;
    torch::Tensor q = q0.to(dt).detach().requires_grad_(true);
    torch::Tensor k = k0.to(dt).detach().requires_grad_(true);
    torch::Tensor v = v0.to(dt).detach().requires_grad_(true);
    auto o = FlexAttentionOptions().block_mask(bm).alibi_slopes(slopes);
    torch::Tensor out =
        fused ? flex_attention(q, k, v, o).output : flex_attention_reference(q, k, v, o).output;
    (out.to(torch::kDouble) * dout.to(torch::kDouble)).sum().backward();
    return std::vector<torch::Tensor>{q.grad(), k.grad(), v.grad()};
  };
  std::vector<torch::Tensor> expected = run(false);
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    std::vector<torch::Tensor> got = run(true);
    for (size_t n = 0; n < got.size(); ++n) {
      EXPECT_TRUE(torch::allclose(got[n].to(torch::kDouble), expected[n], 1e-4, 1e-4))
          << n << " max abs diff "
          << (got[n].to(torch::kDouble) - expected[n]).abs().max().item<double>();
    }
  }
}

TEST(FlexGradients, Float64GradcheckOfTheReferencePath) {
  // fp64 runs the composed reference (the fused kernels are fp32/bf16); gradcheck it with
  // central differences, since it is the oracle of the fused backward above.
  torch::manual_seed(3);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  torch::Tensor q = torch::randn({1, 2, 3, 4}, opts), k = torch::randn({1, 1, 5, 4}, opts);
  torch::Tensor v = torch::randn({1, 1, 5, 3}, opts), s = torch::randn({2}, opts);
  std::vector<torch::Tensor> inputs = {q, k, v, s};
  auto f = [&](const std::vector<torch::Tensor>& x) {
    return flex_attention(x[0], x[1], x[2],
                          FlexAttentionOptions().causal(true).softcap(2.0).sinks(x[3]))
        .output.sum();
  };
  for (size_t n = 0; n < inputs.size(); ++n) {
    std::vector<torch::Tensor> x;
    for (auto& t : inputs) x.push_back(t.detach().requires_grad_(true));
    torch::Tensor analytic = torch::autograd::grad({f(x)}, {x[n]})[0];
    torch::Tensor flat = inputs[n].reshape(-1);
    torch::Tensor numeric = torch::zeros_like(flat);
    for (int64_t e = 0; e < flat.numel(); ++e) {
      std::vector<torch::Tensor> plus, minus;
      for (auto& t : inputs) plus.push_back(t.clone()), minus.push_back(t.clone());
      plus[n].view(-1)[e] += 1e-6;
      minus[n].view(-1)[e] -= 1e-6;
      numeric[e] = (f(plus) - f(minus)).item<double>() / 2e-6;
    }
    EXPECT_TRUE(torch::allclose(analytic.reshape(-1), numeric, 1e-6, 1e-6)) << n;
  }
}

}  // namespace
}  // namespace attnkit
