// index_topk (fused indexer scoring + streaming top-k) against its composed reference, on every
// ISA path, plus its tie rule, decoding consistency and errors.

#include "support/contract.h"
#include "support/pch.h"
#include "support/tolerance.h"

namespace attnkit {
namespace {

using namespace functional;  // NOLINT

struct IndexInputs {
  torch::Tensor q, k, w;
};

IndexInputs make(int64_t B, int64_t G, int64_t Tq, int64_t Hi, int64_t D, int64_t Tk) {
  torch::manual_seed(11);
  return {torch::randn({B, G, Tq, Hi, D}), torch::randn({B, Tk, D}), torch::randn({B, G, Tq, Hi})};
}

// The kernel on every ISA path (and the scalar reference kernel) equals the sort-based
// composition, index for index.
void expect_matches_reference(const IndexInputs& in, bool weighted, const IndexTopkOptions& o) {
  torch::Tensor w = weighted ? in.w : torch::Tensor();
  torch::Tensor expected = index_topk_reference(in.q, in.k, w, o);
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    torch::Tensor got = index_topk(in.q, in.k, w, o);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(torch::equal(got, expected))
        << "top_k " << o.top_k() << " causal " << o.causal() << " block " << o.block_size();
  }
}

// Heads in whole register blocks (4, 8) are combined in registers, others (3) after a score
// tile; top 1 and 5 stream into heaps, top 64 takes the radix select.
TEST(IndexTopk, DeepSeekIndexerMatchesReference) {
  for (int64_t heads : {4, 8, 3}) {
    SCOPED_TRACE(heads);
    IndexInputs in = make(2, 1, 37, heads, 16, 37);
    for (bool causal : {false, true}) {
      for (int64_t top_k : {1, 5, 64}) {
        expect_matches_reference(in, true, IndexTopkOptions().top_k(top_k).causal(causal));
      }
    }
  }
}

TEST(IndexTopk, LongListsSelectedByRadixMatchReference) {
  // top_k >= 48 selects over whole scored rows by radix select: every digit level, masks, and
  // rows with fewer visible keys than top_k.
  IndexInputs in = make(1, 2, 300, 2, 16, 420);
  torch::Tensor mask = torch::rand({300, 420}) < 0.7;
  for (int64_t top_k : {64, 128, 333}) {
    expect_matches_reference(in, true, IndexTopkOptions().top_k(top_k).causal(true));
    expect_matches_reference(in, true, IndexTopkOptions().top_k(top_k).mask(mask));
  }
  // Ties across the cut: scores rounded to a coarse grid, so many equal the top_k-th.
  in.q = in.q.round();
  in.k = in.k.round();
  in.w = in.w.abs().round();
  expect_matches_reference(in, true, IndexTopkOptions().top_k(150).causal(true));
}

TEST(IndexTopk, BlockSelectionMatchesReference) {
  // MiniMax: groups with one head each, no ReLU, scaled logits, blocks of 4 keys (a partial
  // tail block), fewer queries than keys.
  IndexInputs in = make(2, 3, 9, 1, 24, 46);
  for (bool causal : {false, true}) {
    for (int64_t top_k : {1, 3, 20}) {
      expect_matches_reference(
          in, false,
          IndexTopkOptions().top_k(top_k).causal(causal).relu(false).scale(0.2).block_size(4));
    }
  }
}

TEST(IndexTopk, LargeBlocksMatchReference) {
  // Blocks of 64 and 128 keys (whole key tiles, scored by vector maxima), a partial tail block,
  // causal and masked rows.
  IndexInputs in = make(1, 2, 300, 1, 32, 700);
  torch::Tensor mask = torch::rand({300, 700}) < 0.8;
  for (int64_t bs : {64, 128}) {
    for (int64_t top_k : {1, 3, 16}) {
      auto o = IndexTopkOptions().top_k(top_k).relu(false).block_size(bs);
      expect_matches_reference(in, false, IndexTopkOptions(o).causal(true));
      expect_matches_reference(in, false, IndexTopkOptions(o).mask(mask));
    }
  }
}

TEST(IndexTopk, MaskedKeysAreNeverSelectedAndEmptyRowsAreMinusOne) {
  IndexInputs in = make(2, 2, 70, 3, 8, 70);
  torch::Tensor mask = torch::rand({2, 70, 70}) < 0.5;
  mask.select(1, 3).fill_(false);  // query 3 sees nothing
  for (int64_t bs : {1, 8}) {
    auto o = IndexTopkOptions().top_k(6).causal(true).mask(mask).block_size(bs);
    expect_matches_reference(in, true, o);
    torch::Tensor got = index_topk(in.q, in.k, in.w, o);
    EXPECT_TRUE((got.select(2, 3) == -1).all().item<bool>());
    if (bs == 1) {
      torch::Tensor safe = got.clamp_min(0);
      torch::Tensor seen = mask.unsqueeze(1).expand({2, 2, 70, 70}).gather(-1, safe);
      EXPECT_TRUE((seen | (got == -1)).all().item<bool>());
    }
  }
}

TEST(IndexTopk, EqualScoresKeepTheEarlierKeys) {
  // Identical keys: every visible key scores the same, so the first top_k visible keys win,
  // through the heap (top 20) and the radix select (top 70).
  IndexInputs in = make(1, 1, 130, 2, 8, 130);
  in.k = in.k.narrow(1, 0, 1).expand({1, 130, 8}).contiguous();
  for (int64_t top_k : {20, 70}) {
    for (const char* isa : testing::isa_paths()) {
      SCOPED_TRACE(isa);
      testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
      torch::Tensor got = index_topk(in.q, in.k, in.w.abs(), IndexTopkOptions().top_k(top_k));
      EXPECT_TRUE(torch::equal(got, torch::arange(top_k).expand({1, 1, 130, top_k})));
    }
  }
}

TEST(IndexTopk, LastQueryAloneSelectsWhatTheFullCausalPassSelects) {
  IndexInputs in = make(1, 1, 200, 4, 16, 200);
  auto o = IndexTopkOptions().top_k(32).causal(true);
  torch::Tensor full = index_topk(in.q, in.k, in.w, o);
  torch::Tensor last = index_topk(in.q.narrow(2, 199, 1), in.k, in.w.narrow(2, 199, 1), o);
  EXPECT_TRUE(torch::equal(last, full.narrow(2, 199, 1)));
}

TEST(IndexTopk, BFloat16InputsMatchTheReference) {
  IndexInputs in = make(1, 1, 50, 4, 32, 50);
  in.q = in.q.to(torch::kBFloat16);
  in.k = in.k.to(torch::kBFloat16);
  expect_matches_reference(in, true, IndexTopkOptions().top_k(8).causal(true));
}

TEST(IndexTopk, ErrorsNameArgumentAndValues) {
  IndexInputs in = make(1, 1, 5, 2, 8, 5);
  ATTNKIT_EXPECT_ERROR(index_topk(in.q.squeeze(1), in.k),
                       ::testing::HasSubstr("index_topk: expected q of shape"));
  ATTNKIT_EXPECT_ERROR(
      index_topk(in.q, in.k.narrow(2, 0, 4)),
      ::testing::HasSubstr(
          "index_topk: expected k of shape [B, Tk, Di] = [1, Tk, 8], got [1, 5, 4]"));
  ATTNKIT_EXPECT_ERROR(
      index_topk(in.q, in.k, in.w.narrow(3, 0, 1)),
      ::testing::HasSubstr("expected w of shape [B, G, Tq, Hi] = [1, 1, 5, 2], got [1, 1, 5, 1]"));
  ATTNKIT_EXPECT_ERROR(index_topk(in.q, in.k, {}, IndexTopkOptions().top_k(0)),
                       ::testing::HasSubstr("index_topk: top_k must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(index_topk(in.q, in.k, {}, IndexTopkOptions().block_size(-2)),
                       ::testing::HasSubstr("index_topk: block_size must be positive, got -2"));
  ATTNKIT_EXPECT_ERROR(
      index_topk(in.q, in.k, {}, IndexTopkOptions().mask(torch::ones({5, 4}, torch::kBool))),
      ::testing::HasSubstr("expected a bool mask of shape [Tq, Tk] or [B, Tq, Tk]"));
  ATTNKIT_EXPECT_ERROR(
      index_topk(in.q, in.k, {}, IndexTopkOptions().key_limit(torch::ones({4}, torch::kLong))),
      ::testing::HasSubstr(
          "index_topk: expected an int64 key_limit of shape [Tq] = [5], got Long [4]"));
  ATTNKIT_EXPECT_ERROR(
      index_topk(in.q, in.k, {}, IndexTopkOptions().index_dtype(torch::kFloat)),
      ::testing::HasSubstr("index_topk: index_dtype must be Long or Int, got Float"));
  ATTNKIT_EXPECT_ERROR(
      index_topk(in.q, in.k, {}, IndexTopkOptions().key_limit(torch::ones({5}))),
      ::testing::HasSubstr("expected an int64 key_limit of shape [Tq] = [5], got Float [5]"));
}

// index_dtype(kInt) gives the int64 selection as int32, on the heap, radix and block paths.
TEST(IndexTopk, Int32OutputEqualsInt64) {
  IndexInputs in = make(2, 2, 50, 4, 16, 70);
  for (const char* isa : testing::isa_paths()) {
    SCOPED_TRACE(isa);
    testing::EnvGuard guard("ATTNKIT_CPU_CAPABILITY", isa);
    for (auto o : {IndexTopkOptions().top_k(5).causal(true), IndexTopkOptions().top_k(64),
                   IndexTopkOptions().top_k(3).block_size(8)}) {
      torch::Tensor wide = index_topk(in.q, in.k, in.w, o);
      torch::Tensor narrow = index_topk(in.q, in.k, in.w, o.index_dtype(torch::kInt));
      EXPECT_EQ(narrow.scalar_type(), torch::kInt);
      EXPECT_TRUE(torch::equal(narrow.to(torch::kLong), wide));
      EXPECT_TRUE(torch::equal(index_topk_reference(in.q, in.k, in.w, o), narrow));
    }
  }
}

// A visible prefix per query (key_limit), not growing with the query and out of range at
// places, alone and with causal, a mask and blocks, on the heap and the radix paths.
TEST(IndexTopk, KeyLimitMatchesReference) {
  IndexInputs in = make(2, 1, 60, 4, 16, 90);
  torch::manual_seed(3);
  torch::Tensor limit = torch::randint(-3, 100, {60}, torch::kLong);
  torch::Tensor mask = torch::rand({60, 90}) < 0.8;
  for (int64_t top_k : {5, 64}) {
    expect_matches_reference(in, true, IndexTopkOptions().top_k(top_k).key_limit(limit));
    expect_matches_reference(
        in, true, IndexTopkOptions().top_k(top_k).key_limit(limit).causal(true).mask(mask));
    expect_matches_reference(in, true,
                             IndexTopkOptions().top_k(top_k).key_limit(limit).block_size(8));
  }
}

}  // namespace
}  // namespace attnkit
