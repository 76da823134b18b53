// gather_attention against its composed reference, forward and backward.

#include "support/pch.h"
#include "support/tolerance.h"

#include <functional>
#include <vector>

namespace attnkit {
namespace {

using namespace functional;  // NOLINT

struct GatherInputs {
  torch::Tensor q, k, v, idx, w;
};

GatherInputs make(int64_t B,
                  int64_t Hq,
                  int64_t Hkv,
                  int64_t Tq,
                  int64_t Tk,
                  int64_t D,
                  int64_t Dv,
                  int64_t K,
                  torch::ScalarType dtype) {
  torch::manual_seed(5);
  GatherInputs in;
  in.q = torch::randn({B, Hq, Tq, D}).to(dtype);
  in.k = torch::randn({B, Hkv, Tk, D}).to(dtype);
  in.v = torch::randn({B, Hkv, Tk, Dv}).to(dtype);
  in.idx = torch::randint(0, Tk, {B, Hkv, Tq, K});
  // unused slots, and one query (row 1) with none at all
  in.idx.masked_fill_(torch::rand({B, Hkv, Tq, K}) < 0.2, -1);
  in.idx.select(2, 1).fill_(-1);
  in.w = torch::rand({B, Hkv, Tq, K}) + 0.1;
  return in;
}

// The fused gradients (`fused`, run once per ISA path) against `expected` (autograd through the
// reference in double), to 1e-4.
void expect_grads_on_every_isa(const std::function<std::vector<torch::Tensor>()>& fused,
                               const std::vector<torch::Tensor>& expected) {
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    auto got = fused();
    for (size_t n = 0; n < got.size(); ++n) {
      EXPECT_TRUE(torch::allclose(got[n].to(torch::kDouble), expected[n], 1e-4, 1e-4))
          << n << " max abs diff "
          << (got[n].to(torch::kDouble) - expected[n]).abs().max().item<double>();
    }
  }
}

// Gradients of sum(out * dout) for q, k, v, w (when w0 is given) and the sinks (when sinks0 is)
// through the fused op in fp32 (`fused`) or through the reference in double.
std::vector<torch::Tensor> gather_grads(bool fused,
                                        const GatherInputs& in,
                                        const torch::Tensor& idx,
                                        const torch::Tensor& w0,
                                        const torch::Tensor& dout,
                                        GatherAttentionOptions o = {},
                                        const torch::Tensor& sinks0 = {}) {
  auto dt = fused ? torch::kFloat : torch::kDouble;
  torch::Tensor q = in.q.to(dt).detach().requires_grad_(true),
                k = in.k.to(dt).detach().requires_grad_(true);
  torch::Tensor v = in.v.to(dt).detach().requires_grad_(true), w;
  if (w0.defined()) w = w0.to(dt).detach().requires_grad_(true);
  torch::Tensor sinks;
  if (sinks0.defined()) o.sinks(sinks = sinks0.to(dt).detach().requires_grad_(true));
  torch::Tensor out = fused ? gather_attention(q, k, v, idx, w, o).output
                            : gather_attention_reference(q, k, v, idx, w, o).output;
  (out.to(torch::kDouble) * dout.to(torch::kDouble)).sum().backward();
  std::vector<torch::Tensor> grads{q.grad(), k.grad(), v.grad()};
  if (w.defined()) grads.push_back(w.grad());
  if (sinks.defined()) grads.push_back(sinks.grad());
  return grads;
}

// Heads per kv head G = 2, 4 and 3 (the kernel takes them 4, 2 and 1 at a time).
TEST(GatherAttention, ForwardMatchesReference) {
  for (auto dtype : {torch::kFloat, torch::kBFloat16})
    for (auto heads : {std::make_pair(4, 2), std::make_pair(8, 2), std::make_pair(3, 1)}) {
      SCOPED_TRACE(heads.first);
      GatherInputs in = make(2, heads.first, heads.second, 9, 50, 40, 24, 12, dtype);
      for (bool weighted : {false, true}) {
        torch::Tensor w = weighted ? in.w : torch::Tensor();
        for (const char* isa : testing::isa_paths()) {
          SCOPED_TRACE(isa);
          testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
          auto r = gather_attention(in.q, in.k, in.v, in.idx, w);
          auto e = gather_attention_reference(in.q.to(torch::kDouble), in.k.to(torch::kDouble),
                                              in.v.to(torch::kDouble), in.idx,
                                              weighted ? w.to(torch::kDouble) : w);
          const testing::Tolerance tol = testing::tolerance_for(dtype);
          EXPECT_TRUE(torch::allclose(r.output.to(torch::kDouble), e.output, tol.rtol, tol.atol));
          EXPECT_TRUE(
              torch::equal(r.output.select(2, 1), torch::zeros_like(r.output.select(2, 1))));
          EXPECT_TRUE(torch::isneginf(r.lse.select(2, 1)).all().item<bool>());
          EXPECT_FALSE(r.output.isnan().any().item<bool>());
        }
      }
    }
}

TEST(GatherAttention, GradientsMatchAutogradThroughTheReference) {
  GatherInputs in = make(2, 4, 2, 7, 30, 40, 24, 21, torch::kFloat);
  torch::Tensor dout = torch::randn({2, 4, 7, 24});
  auto run = [&](bool fused) { return gather_grads(fused, in, in.idx, in.w, dout); };
  auto expected = run(false);
  expect_grads_on_every_isa([&] { return run(true); }, expected);
}

// The backward walks the key axis in chunks and the queries in blocks as the forward does:
// lists spanning many chunks (with duplicates and unused slots), several query blocks, one and
// two heads per kv head (one head takes qk_segment), weights, to the reference's gradients.
TEST(GatherAttention, GradientsOverManyChunksMatchReference) {
  for (int64_t Hkv : {4, 2}) {
    SCOPED_TRACE(Hkv);
    GatherInputs in = make(1, 4, Hkv, 200, 1500, 32, 16, 150, torch::kFloat);
    torch::Tensor dout = torch::randn({1, 4, 200, 16});
    for (bool weighted : {false, true}) {
      torch::Tensor w = weighted ? in.w : torch::Tensor();
      auto run = [&](bool fused) { return gather_grads(fused, in, in.idx, w, dout); };
      auto expected = run(false);
      expect_grads_on_every_isa([&] { return run(true); }, expected);
    }
  }
}

// int32 lists are read as they are: the same output, lse and gradients as int64 ones, per kv
// head and shared, token and block lists.
TEST(GatherAttention, Int32IndicesEqualInt64) {
  GatherInputs in = make(1, 4, 2, 40, 600, 32, 16, 60, torch::kFloat);
  torch::Tensor dout = torch::randn({1, 4, 40, 16});
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    for (torch::Tensor idx : {in.idx, in.idx.narrow(1, 0, 1)}) {
      auto fwd = [&](const torch::Tensor& i) { return gather_attention(in.q, in.k, in.v, i); };
      auto wide = fwd(idx), narrow = fwd(idx.to(torch::kInt));
      EXPECT_TRUE(torch::equal(wide.output, narrow.output));
      EXPECT_TRUE(torch::equal(wide.lse, narrow.lse));
      auto g_wide = gather_grads(true, in, idx, {}, dout);
      auto g_narrow = gather_grads(true, in, idx.to(torch::kInt), {}, dout);
      for (size_t n = 0; n < g_wide.size(); ++n) EXPECT_TRUE(torch::equal(g_wide[n], g_narrow[n]));
    }
    auto opts = GatherAttentionOptions().block_size(16).causal(true);
    torch::Tensor blocks = in.idx.div(16, "floor");
    EXPECT_TRUE(
        torch::equal(gather_attention(in.q, in.k, in.v, blocks, {}, opts).output,
                     gather_attention(in.q, in.k, in.v, blocks.to(torch::kInt), {}, opts).output));
  }
}

// One list per query shared by the kv heads ([B, 1, Tq, K]) equals that list repeated per head,
// forward and backward, with and without weights (whose gradient sums over the heads).
TEST(GatherAttention, SharedListsEqualListsRepeatedPerHead) {
  GatherInputs in = make(2, 6, 3, 7, 30, 16, 8, 10, torch::kFloat);
  torch::Tensor idx = in.idx.narrow(1, 0, 1), w0 = in.w.narrow(1, 0, 1);
  torch::Tensor dout = torch::randn({2, 6, 7, 8});
  for (bool weighted : {false, true}) {
    for (const char* isa : testing::isa_paths()) {
      SCOPED_TRACE(isa);
      testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
      auto run = [&](bool shared) {
        torch::Tensor q = in.q.detach().requires_grad_(true),
                      k = in.k.detach().requires_grad_(true);
        torch::Tensor v = in.v.detach().requires_grad_(true), w = w0.detach().requires_grad_(true);
        torch::Tensor i = shared ? idx : idx.expand({2, 3, 7, 10});
        torch::Tensor ww = !weighted ? torch::Tensor() : shared ? w : w.expand({2, 3, 7, 10});
        torch::Tensor out = gather_attention(q, k, v, i, ww).output;
        (out * dout).sum().backward();
        return std::vector<torch::Tensor>{out, q.grad(), k.grad(), v.grad(),
                                          weighted ? w.grad() : torch::zeros({1})};
      };
      auto a = run(true), b = run(false);
      for (size_t n = 0; n < a.size(); ++n) {
        EXPECT_TRUE(torch::allclose(a[n], b[n], 1e-5, 1e-5)) << n << " weighted " << weighted;
      }
    }
  }
}

// Sink logits per query head: finite ones and one -inf (that head behaves as without a sink).
torch::Tensor make_sinks(int64_t Hq) {
  torch::Tensor sinks = torch::randn({Hq});
  sinks[Hq - 1] = -std::numeric_limits<float>::infinity();
  return sinks;
}

TEST(GatherAttention, SinksForwardMatchesReference) {
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    GatherInputs in = make(2, 4, 2, 9, 50, 40, 24, 12, dtype);
    torch::Tensor sinks = make_sinks(4);
    for (bool weighted : {false, true}) {
      torch::Tensor w = weighted ? in.w : torch::Tensor();
      auto e = gather_attention_reference(in.q.to(torch::kDouble), in.k.to(torch::kDouble),
                                          in.v.to(torch::kDouble), in.idx,
                                          weighted ? w.to(torch::kDouble) : w,
                                          GatherAttentionOptions().sinks(sinks.to(torch::kDouble)));
      for (const char* isa : testing::isa_paths()) {
        SCOPED_TRACE(isa);
        testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
        auto r =
            gather_attention(in.q, in.k, in.v, in.idx, w, GatherAttentionOptions().sinks(sinks));
        const testing::Tolerance tol = testing::tolerance_for(dtype);
        EXPECT_TRUE(torch::allclose(r.output.to(torch::kDouble), e.output, tol.rtol, tol.atol));
        EXPECT_TRUE(torch::allclose(r.lse.to(torch::kDouble), e.lse, 1e-4, 1e-4));
        // row 1 lists no key: zero output, and the lse is the sink alone
        EXPECT_TRUE(torch::equal(r.output.select(2, 1), torch::zeros_like(r.output.select(2, 1))));
        EXPECT_TRUE(torch::allclose(r.lse.select(2, 1), sinks.view({1, 4}).expand({2, 4})));
      }
    }
    // a sink only adds to the denominator: weights shrink by the same factor, so outputs too
    auto without = gather_attention(in.q, in.k, in.v, in.idx);
    auto with =
        gather_attention(in.q, in.k, in.v, in.idx, {}, GatherAttentionOptions().sinks(sinks));
    torch::Tensor shrink = 1.0 - torch::exp(sinks.view({1, 4, 1}) - with.lse);  // sum of p_j
    shrink = torch::where(torch::isneginf(with.lse), torch::zeros_like(shrink), shrink);
    const testing::Tolerance tol = testing::tolerance_for(dtype);
    EXPECT_TRUE(torch::allclose(with.output.to(torch::kFloat),
                                without.output.to(torch::kFloat) * shrink.unsqueeze(-1),
                                2 * tol.rtol, 2 * tol.atol));
  }
}

TEST(GatherAttention, SinkGradientsMatchAutogradThroughTheReference) {
  GatherInputs in = make(2, 4, 2, 7, 30, 40, 24, 21, torch::kFloat);
  torch::Tensor sinks0 = make_sinks(4);
  sinks0[0] = 3.0;  // a sink that dominates some rows
  torch::Tensor dout = torch::randn({2, 4, 7, 24});
  auto run = [&](bool fused) { return gather_grads(fused, in, in.idx, in.w, dout, {}, sinks0); };
  auto expected = run(false);
  ASSERT_GT(expected[4].abs().sum().item<double>(), 0.0);
  expect_grads_on_every_isa([&] { return run(true); }, expected);
}

// Long key axes are walked in chunks with the softmax carried across them, and queries come in
// blocks: lists spanning several chunks (sorted or not, with duplicates and unused slots), more
// queries than one block, weights and sinks, against the reference in double. One head per kv
// head takes qk_segment (q in registers; D = 32 and 128) for whole vectors of a segment's keys.
TEST(GatherAttention, ListsSpanningManyChunksMatchReference) {
  struct Shape {
    int64_t Hq, Hkv, D, Dv;
  };
  for (Shape sh : {Shape{4, 2, 32, 16}, Shape{2, 2, 32, 16}, Shape{2, 2, 128, 128}})
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {  // rows read in place, or widened
      SCOPED_TRACE(sh.Hq * 1000 + sh.Hkv * 100 + sh.D);
      // 2 blocks, 5 chunks
      GatherInputs in = make(1, sh.Hq, sh.Hkv, 300, 2100, sh.D, sh.Dv, 300, dtype);
      torch::Tensor sinks = torch::randn({sh.Hq});
      const testing::Tolerance tol = testing::tolerance_for(dtype);
      for (bool sorted : {false, true}) {
        torch::Tensor idx = sorted ? std::get<0>(in.idx.sort(-1)) : in.idx;
        for (bool weighted : {false, true}) {
          torch::Tensor w = weighted ? in.w : torch::Tensor();
          auto e = gather_attention_reference(
              in.q.to(torch::kDouble), in.k.to(torch::kDouble), in.v.to(torch::kDouble), idx,
              weighted ? w.to(torch::kDouble) : w,
              GatherAttentionOptions().sinks(sinks.to(torch::kDouble)));
          for (const char* isa : testing::isa_paths()) {
            SCOPED_TRACE(isa);
            testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
            auto r =
                gather_attention(in.q, in.k, in.v, idx, w, GatherAttentionOptions().sinks(sinks));
            EXPECT_TRUE(torch::allclose(r.output.to(torch::kDouble), e.output, tol.rtol, tol.atol))
                << (r.output.to(torch::kDouble) - e.output).abs().max().item<double>();
            EXPECT_TRUE(torch::allclose(r.lse.to(torch::kDouble), e.lse, 1e-5, 1e-5));
          }
        }
      }
    }
}

// Block lists [B, Hkv, Tq, K] of block ids -> token lists [B, Hkv, Tq, K * bs] by loops: the
// keys of each block that exist and (causal) are not after the query; -1 elsewhere.
std::pair<torch::Tensor, torch::Tensor> expand_blocks(
    const torch::Tensor& blocks, const torch::Tensor& w, int64_t bs, int64_t Tk, bool causal) {
  const int64_t B = blocks.size(0), H = blocks.size(1), Tq = blocks.size(2), K = blocks.size(3);
  torch::Tensor tok = torch::full({B, H, Tq, K * bs}, -1, torch::kLong);
  torch::Tensor tw = torch::zeros({B, H, Tq, K * bs});
  auto b_a = blocks.accessor<int64_t, 4>();
  auto t_a = tok.accessor<int64_t, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t n = 0; n < K; ++n)
          for (int64_t c = 0; c < bs; ++c) {
            const int64_t j = b_a[b][h][i][n] * bs + c;
            if (b_a[b][h][i][n] >= 0 && j < Tk && (!causal || j <= i + Tk - Tq))
              t_a[b][h][i][n * bs + c] = j;
            if (w.defined()) tw[b][h][i][n * bs + c] = w[b][h][i][n];
          }
  return {tok, w.defined() ? tw : torch::Tensor()};
}

// block_size / causal: the same result as the token lists they stand for, forward (bf16 too)
// and backward (the weight gradient sums over each block's keys); the partial last block and
// Tq < Tk (bottom-right causal alignment) included.
TEST(GatherAttention, BlockListsEqualTheirTokenLists) {
  const int64_t bs = 8, Tq = 20, Tk = 45, nb = 6;  // last block holds 5 keys
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    GatherInputs in = make(1, 4, 2, Tq, Tk, 32, 16, 4, dtype);
    torch::Tensor blocks = torch::randint(0, nb, {1, 2, Tq, 4});
    blocks.masked_fill_(torch::rand({1, 2, Tq, 4}) < 0.2, -1);
    const testing::Tolerance tol = testing::tolerance_for(dtype);
    for (bool causal : {false, true}) {
      for (bool weighted : {false, true}) {
        SCOPED_TRACE(std::to_string(causal) + std::to_string(weighted));
        torch::Tensor w = weighted ? in.w : torch::Tensor();
        auto tokens = expand_blocks(blocks, w, bs, Tk, causal);
        auto opts = GatherAttentionOptions().block_size(bs).causal(causal);
        auto e = gather_attention_reference(in.q.to(torch::kDouble), in.k.to(torch::kDouble),
                                            in.v.to(torch::kDouble), tokens.first,
                                            weighted ? tokens.second.to(torch::kDouble) : w);
        auto rb = gather_attention_reference(in.q.to(torch::kDouble), in.k.to(torch::kDouble),
                                             in.v.to(torch::kDouble), blocks,
                                             weighted ? w.to(torch::kDouble) : w, opts);
        EXPECT_TRUE(torch::allclose(rb.output, e.output, 1e-10, 1e-10));
        for (const char* isa : testing::isa_paths()) {
          SCOPED_TRACE(isa);
          testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
          auto r = gather_attention(in.q, in.k, in.v, blocks, w, opts);
          EXPECT_TRUE(torch::allclose(r.output.to(torch::kDouble), e.output, tol.rtol, tol.atol))
              << (r.output.to(torch::kDouble) - e.output).abs().max().item<double>();
          EXPECT_TRUE(torch::allclose(r.lse.to(torch::kDouble), e.lse, 1e-4, 1e-4));
        }
      }
    }
  }
  GatherInputs in = make(1, 4, 2, Tq, Tk, 32, 16, 4, torch::kFloat);
  torch::Tensor blocks = torch::randint(0, nb, {1, 2, Tq, 4});
  torch::Tensor w0 = torch::rand({1, 2, Tq, 4}) + 0.1;
  torch::Tensor dout = torch::randn({1, 4, Tq, 16});
  auto opts = GatherAttentionOptions().block_size(bs).causal(true);
  auto run = [&](bool fused) { return gather_grads(fused, in, blocks, w0, dout, opts); };
  auto expected = run(false);
  expect_grads_on_every_isa([&] { return run(true); }, expected);
}

TEST(GatherAttention, DenseIndicesEqualFullAttention) {
  GatherInputs in = make(1, 2, 1, 5, 5, 16, 16, 5, torch::kFloat);
  torch::Tensor all = torch::arange(5).view({1, 1, 1, 5}).expand({1, 1, 5, 5});
  auto g = gather_attention(in.q, in.k, in.v, all);
  auto f = flex_attention(in.q, in.k, in.v);
  EXPECT_TRUE(torch::allclose(g.output, f.output, 1e-5, 1e-5));
}

TEST(GatherAttention, ErrorsNameArgumentAndValues) {
  GatherInputs in = make(1, 2, 1, 5, 5, 16, 16, 3, torch::kFloat);
  EXPECT_THAT([&] { gather_attention(in.q, in.k, in.v, in.idx + 10); },
              ::testing::ThrowsMessage<c10::Error>(::testing::HasSubstr(
                  "gather_attention: expected indices in [-1, Tk) = [-1, 5)")));
  EXPECT_THAT(
      [&] {
        gather_attention(in.q, in.k, in.v, in.idx, {}, GatherAttentionOptions().block_size(2));
      },
      ::testing::ThrowsMessage<c10::Error>(::testing::HasSubstr(
          "gather_attention: expected indices in [-1, number of key blocks) = [-1, 3), got")));
  EXPECT_THAT(
      [&] {
        gather_attention(in.q, in.k, in.v, in.idx, {}, GatherAttentionOptions().block_size(0));
      },
      ::testing::ThrowsMessage<c10::Error>(
          ::testing::HasSubstr("gather_attention: expected block_size >= 1, got 0")));
  EXPECT_THAT([&] { gather_attention(in.q, in.k, in.v, in.idx.squeeze(0)); },
              ::testing::ThrowsMessage<c10::Error>(
                  ::testing::HasSubstr("expected indices of shape [B, Hkv or 1, Tq, K]")));
  EXPECT_THAT(
      [&] {
        gather_attention(in.q, in.k, in.v, in.idx, {},
                         GatherAttentionOptions().sinks(torch::zeros({3})));
      },
      ::testing::ThrowsMessage<c10::Error>(
          ::testing::HasSubstr("gather_attention: expected sinks of shape [Hq] = [2], got [3]")));
}

}  // namespace
}  // namespace attnkit
