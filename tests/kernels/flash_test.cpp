// Sweeps of the fused flash kernels (every ISA path forced in turn) against the reference
// attention evaluated in float64.

#include "support/pch.h"
#include "support/tolerance.h"

#include <sstream>

namespace attnkit {
namespace {

using functional::FlexAttentionOptions;
using testing::EnvGuard;

// Memory layouts of the inputs.
enum class Layout { kContiguous, kTransposed, kStrided };

struct FlashCase {
  int64_t B = 1, Hq = 2, Hkv = 1, Tq = 7, Tk = 7, D = 32, Dv = 32;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  bool sinks = false;
  bool bias = false;
  bool mask = false;
  Layout layout = Layout::kContiguous;
  torch::ScalarType dtype = torch::kFloat;

  std::string name() const {
    std::ostringstream s;
    s << "B" << B << "_Hq" << Hq << "_Hkv" << Hkv << "_Tq" << Tq << "_Tk" << Tk << "_D" << D
      << "_Dv" << Dv;
    if (causal) s << "_causal";
    if (window_left >= 0) s << "_wl" << window_left;
    if (window_right >= 0) s << "_wr" << window_right;
    if (sinks) s << "_sinks";
    if (bias) s << "_bias";
    if (mask) s << "_mask";
    if (layout == Layout::kTransposed) s << "_transposed";
    if (layout == Layout::kStrided) s << "_strided";
    if (dtype == torch::kBFloat16) s << "_bf16";
    return s.str();
  }
};

// A [B, H, T, E] tensor in the requested memory layout.
torch::Tensor make_input(
    Layout layout, int64_t B, int64_t H, int64_t T, int64_t E, torch::ScalarType dtype) {
  torch::Tensor x;
  switch (layout) {
    case Layout::kContiguous:
      x = torch::randn({B, H, T, E});
      break;
    case Layout::kTransposed:
      x = torch::randn({B, T, H, E}).transpose(1, 2);
      break;                // [B,T,H,E]
    case Layout::kStrided:  // last dim not unit-stride, and a gap between rows
      x = torch::randn({B, H, E, T + 3}).slice(3, 1, T + 1).transpose(2, 3);
      break;
  }
  return x.to(dtype);
}

class FlashSweep : public ::testing::TestWithParam<FlashCase> {};

TEST_P(FlashSweep, MatchesReferenceOnEveryIsaPath) {
  const FlashCase c = GetParam();
  torch::manual_seed(1234);
  torch::Tensor q = make_input(c.layout, c.B, c.Hq, c.Tq, c.D, c.dtype);
  torch::Tensor k = make_input(c.layout, c.B, c.Hkv, c.Tk, c.D, c.dtype);
  torch::Tensor v = make_input(c.layout, c.B, c.Hkv, c.Tk, c.Dv, c.dtype);
  if (c.layout != Layout::kContiguous) {
    ASSERT_FALSE(q.is_contiguous());
  }

  FlexAttentionOptions o;
  DotProductAttentionOptions ref;
  o.causal(c.causal);
  ref.causal(c.causal);
  if (c.window_left >= 0) o.window_left(c.window_left), ref.window_left(c.window_left);
  if (c.window_right >= 0) o.window_right(c.window_right), ref.window_right(c.window_right);
  if (c.sinks) {
    torch::Tensor s = torch::randn({c.Hq}) * 2;
    o.sinks(s);
    ref.sinks(s.to(torch::kDouble));
  }
  if (c.bias) {
    torch::Tensor b = torch::randn({c.Hq, c.Tq, c.Tk});  // broadcast over the batch
    o.bias(b);
    ref.bias(b.to(torch::kDouble));
  }
  if (c.mask) {
    // Random keep mask with some fully masked rows.
    torch::Tensor m = torch::rand({c.B, 1, c.Tq, c.Tk}) > 0.3;
    m.index_put_({torch::indexing::Slice(), 0, torch::indexing::Slice(0, torch::indexing::None, 3)},
                 false);
    o.mask(m);
    ref.mask(m);
  }
  AttentionResult expected =
      reference_attention(q.to(torch::kDouble), k.to(torch::kDouble), v.to(torch::kDouble), ref);
  const testing::Tolerance tol = testing::tolerance_for(c.dtype);
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    functional::FlexAttentionResult r = functional::flex_attention(q, k, v, o);
    ASSERT_EQ(r.output.scalar_type(), c.dtype);
    ASSERT_EQ(r.output.sizes(), torch::IntArrayRef({c.B, c.Hq, c.Tq, c.Dv}));
    EXPECT_FALSE(r.output.isnan().any().item<bool>());
    EXPECT_TRUE(torch::allclose(r.output.to(torch::kDouble), expected.output, tol.rtol, tol.atol))
        << "max abs diff "
        << (r.output.to(torch::kDouble) - expected.output).abs().max().item<double>();
    // lse: equal where finite, -inf exactly where the reference has -inf.
    torch::Tensor lse_ref = expected.lse;
    torch::Tensor finite = torch::isfinite(lse_ref);
    EXPECT_TRUE(torch::equal(torch::isfinite(r.lse), finite));
    EXPECT_TRUE(torch::allclose(r.lse.to(torch::kDouble).masked_select(finite),
                                lse_ref.masked_select(finite), 1e-4, 1e-4));
  }
}

std::vector<FlashCase> sweep_cases() {
  std::vector<FlashCase> cases;
  auto add = [&](FlashCase c) { cases.push_back(c); };
  // Lengths (square and Tq < Tk), causal on and off.
  const std::vector<std::pair<int64_t, int64_t>> lengths = {{1, 1},  {7, 7},     {97, 97}, {1, 97},
                                                            {7, 97}, {97, 1000}, {1, 1000}};
  for (auto [tq, tk] : lengths) {
    for (bool causal : {false, true}) {
      FlashCase c;
      c.Tq = tq, c.Tk = tk, c.causal = causal, c.D = 64, c.Dv = 64;
      add(c);
    }
  }
  {
    FlashCase c;  // the one long square case, kept small in heads
    c.Tq = c.Tk = 1000, c.Hq = 2, c.Hkv = 1, c.D = 32, c.Dv = 32, c.causal = true;
    add(c);
  }
  // GQA ratios x head dims (Dv != D included).
  for (int64_t ratio : {1, 2, 8}) {
    for (auto [d, dv] : std::vector<std::pair<int64_t, int64_t>>{
             {32, 32}, {64, 64}, {80, 80}, {128, 128}, {64, 32}, {80, 128}}) {
      FlashCase c;
      c.Hkv = 1, c.Hq = ratio, c.Tq = 97, c.Tk = 97, c.D = d, c.Dv = dv, c.causal = ratio != 2;
      add(c);
    }
  }
  // Sliding windows at their edges (0, 1, exactly the tile width, past the sequence).
  for (int64_t wl : {0, 1, 63, 64, 65, 200}) {
    FlashCase c;
    c.Tq = 97, c.Tk = 130, c.causal = true, c.window_left = wl;
    add(c);
  }
  for (auto [wl, wr] : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {5, 3}, {64, 64}}) {
    FlashCase c;
    c.Tq = 97, c.Tk = 97, c.window_left = wl, c.window_right = wr;
    add(c);
  }
  {
    FlashCase c;  // right window only, decode-like
    c.Tq = 7, c.Tk = 97, c.window_right = 2;
    add(c);
  }
  // Sinks (also with every key masked by a zero window on one side), bias, random masks.
  for (bool causal : {false, true}) {
    FlashCase c;
    c.Tq = 97, c.Tk = 97, c.Hq = 4, c.Hkv = 2, c.sinks = true, c.causal = causal;
    add(c);
  }
  {
    FlashCase c;
    c.Tq = 97, c.Tk = 97, c.Hq = 4, c.Hkv = 2, c.bias = true, c.causal = true;
    add(c);
  }
  for (bool sinks : {false, true}) {
    FlashCase c;
    c.B = 2, c.Tq = 97, c.Tk = 150, c.Hq = 4, c.Hkv = 2, c.mask = true, c.sinks = sinks;
    add(c);
  }
  // Non-contiguous inputs.
  for (Layout layout : {Layout::kTransposed, Layout::kStrided}) {
    FlashCase c;
    c.B = 2, c.Hq = 4, c.Hkv = 2, c.Tq = 97, c.Tk = 97, c.D = 80, c.Dv = 64, c.causal = true;
    c.layout = layout;
    add(c);
  }
  // bf16.
  for (bool causal : {false, true}) {
    FlashCase c;
    c.Hq = 4, c.Hkv = 2, c.Tq = 97, c.Tk = 200, c.D = 64, c.Dv = 64, c.causal = causal;
    c.dtype = torch::kBFloat16;
    add(c);
  }
  {
    FlashCase c;
    c.Hq = 4, c.Hkv = 1, c.Tq = 7, c.Tk = 97, c.D = 80, c.Dv = 80, c.sinks = true;
    c.layout = Layout::kTransposed, c.dtype = torch::kBFloat16;
    add(c);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Kernels,
                         FlashSweep,
                         ::testing::ValuesIn(sweep_cases()),
                         [](const ::testing::TestParamInfo<FlashCase>& info) {
                           return "c" + std::to_string(info.index) + "_" + info.param.name();
                         });

TEST(FlashDispatch, SplitKvDecodeMatchesReference) {
  // One (b, kv head) and one query block with 2 threads: the keys are split across threads and
  // the partial softmax states merged (flash decoding).
  const int saved = torch::get_num_threads();
  torch::set_num_threads(2);
  torch::manual_seed(3);
  torch::Tensor q = torch::randn({1, 4, 1, 64}), k = torch::randn({1, 1, 1000, 64});
  torch::Tensor v = torch::randn({1, 1, 1000, 48}), sinks = torch::randn({4});
  for (int variant = 0; variant < 3; ++variant) {
    FlexAttentionOptions o;
    DotProductAttentionOptions ref;
    if (variant >= 1) o.sinks(sinks), ref.sinks(sinks.to(torch::kDouble));
    if (variant == 2) o.window_left(300).causal(true), ref.window_left(300).causal(true);
    AttentionResult e =
        reference_attention(q.to(torch::kDouble), k.to(torch::kDouble), v.to(torch::kDouble), ref);
    for (const char* isa : testing::isa_paths()) {
      EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
      auto r = functional::flex_attention(q, k, v, o);
      EXPECT_TRUE(torch::allclose(r.output.to(torch::kDouble), e.output, 1e-5, 1e-5))
          << isa << " variant " << variant;
      EXPECT_TRUE(torch::allclose(r.lse.to(torch::kDouble), e.lse, 1e-5, 1e-5)) << isa;
    }
  }
  torch::set_num_threads(saved);
}

TEST(FlashDispatch, RejectsUnknownCapability) {
  EnvGuard guard("ATTNKIT_CPU_CAPABILITY", "sse9");
  torch::Tensor q = torch::randn({1, 1, 3, 8});
  EXPECT_THAT([&] { functional::flex_attention(q, q, q); },
              ::testing::ThrowsMessage<c10::Error>(::testing::HasSubstr("ATTNKIT_CPU_CAPABILITY")));
}

TEST(FlashDispatch, FullyMaskedRowsGiveZerosNotNaN) {
  torch::manual_seed(0);
  torch::Tensor q = torch::randn({1, 2, 5, 16}), k = torch::randn({1, 2, 9, 16});
  torch::Tensor mask = torch::ones({5, 9}, torch::kBool);
  mask[2] = false;
  for (const char* isa : testing::isa_paths()) {
    EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    auto r = functional::flex_attention(q, k, k, FlexAttentionOptions().mask(mask));
    EXPECT_TRUE(torch::equal(r.output.select(2, 2), torch::zeros({1, 2, 16}))) << isa;
    EXPECT_TRUE(torch::isneginf(r.lse.select(2, 2)).all().item<bool>()) << isa;
    EXPECT_FALSE(r.output.isnan().any().item<bool>()) << isa;
  }
}

}  // namespace
}  // namespace attnkit
