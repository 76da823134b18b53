// Tests for include/attnkit/sparse/fixed_maskers.h: the exact pattern of each fixed and oracle
// masker on the documented examples (sparse-attention-hub's unit tests, rewritten).

#include <attnkit/sparse/fixed_maskers.h>
#include <attnkit/sparse/masker.h>
#include <attnkit/sparse/research_attention.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "sparse/sparse_test_util.h"

namespace {

using namespace attnkit::sparse::test_util;  // NOLINT

using namespace attnkit::sparse;
using ::testing::HasSubstr;

Mask run(const Masker& masker, const Qkv& x, const Mask& previous,
         const torch::Tensor& attention_mask = {}) {
  MaskerState state;
  return masker.add_mask(x.k, x.q, x.v, attention_mask, 1.0, 0.0, state, previous, 0);
}

// The active columns of one row of a [B, H, Tq, Tk] mask.
std::vector<int64_t> active(const Mask& m, int64_t b, int64_t h, int64_t i) {
  auto row = m.dense()[b][h][i];
  auto nz = row.gt(0).nonzero().view(-1);
  return std::vector<int64_t>(nz.data_ptr<int64_t>(), nz.data_ptr<int64_t>() + nz.numel());
}

// ---- local --------------------------------------------------------------------------------

TEST(LocalMasker, DocumentedPattern) {
  // sq = 3, sk = 8, w = 2: rows {4, 5}, {5, 6}, {6, 7}.
  auto x = random_qkv(1, 1, 1, 3, 8, 4);
  LocalMasker local(LocalMaskerOptions(2));
  auto m = run(local, x, empty_for(x));
  EXPECT_EQ(active(m, 0, 0, 0), (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(active(m, 0, 0, 1), (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(active(m, 0, 0, 2), (std::vector<int64_t>{6, 7}));
  // A fraction: 0.25 of 8 keys = 2, the same pattern.
  auto mf = run(LocalMasker(LocalMaskerOptions(0.25)), x, empty_for(x));
  EXPECT_TRUE(torch::equal(mf.dense(), m.dense()));
}

TEST(LocalMasker, FullWhenWindowCoversTheKeys) {
  auto x = random_qkv(1, 1, 1, 3, 8, 4);
  EXPECT_TRUE(run(LocalMasker(LocalMaskerOptions(5)), x, empty_for(x)).is_full());   // 8 <= 5 + 3
  EXPECT_FALSE(run(LocalMasker(LocalMaskerOptions(4)), x, empty_for(x)).is_full());  // 8 > 4 + 3
  auto prefill = random_qkv(1, 1, 1, 8, 8, 4);
  EXPECT_TRUE(run(LocalMasker(LocalMaskerOptions(1)), prefill, empty_for(prefill)).is_full());
}

TEST(LocalMasker, KeepsEarlierKeysAndClearsFutureKeys) {
  // Previous: keys 0, 1 and (for the first query) key 7, after its position 5.
  auto x = random_qkv(1, 1, 1, 3, 8, 4);
  auto prev_dense = torch::zeros({1, 1, 3, 8});
  prev_dense.index_put_({0, 0, torch::indexing::Slice(), torch::indexing::Slice(0, 2)}, 1.0);
  prev_dense.index_put_({0, 0, 0, 7}, 0.5);
  LocalMasker local(LocalMaskerOptions(2));
  for (bool as_index : {false, true}) {
    Mask prev = Mask::from_dense({1, 1, 3, 8}, prev_dense);
    if (as_index) {
      auto idx = prev.index();
      prev = Mask::from_indices({1, 1, 3, 8}, idx.indices, idx.ptr, idx.data);
    }
    auto m = run(local, x, prev);
    EXPECT_EQ(m.is_index(), as_index);
    EXPECT_EQ(active(m, 0, 0, 0), (std::vector<int64_t>{0, 1, 4, 5})) << as_index;
    EXPECT_EQ(active(m, 0, 0, 1), (std::vector<int64_t>{0, 1, 5, 6})) << as_index;
    EXPECT_EQ(active(m, 0, 0, 2), (std::vector<int64_t>{0, 1, 6, 7})) << as_index;
  }
}

TEST(LocalMasker, ObservedDecodeShape) {
  // b = 1, h = 4, h_kv = 2, sq = 2, sk = 64: Local(8) -> keys 55..62 for the first query.
  auto x = random_qkv(1, 4, 2, 2, 64, 16);
  auto m = run(LocalMasker(LocalMaskerOptions(8)), x, empty_for(x));
  std::vector<int64_t> want;
  for (int64_t j = 55; j <= 62; ++j) want.push_back(j);
  for (int64_t h = 0; h < 4; ++h) EXPECT_EQ(active(m, 0, h, 0), want);
  EXPECT_DOUBLE_EQ(m.density(), 8.0 / 64.0);
}

// ---- causal -------------------------------------------------------------------------------

TEST(CausalMasker, EmptyBecomesTheCausalPattern) {
  auto x = random_qkv(1, 1, 1, 3, 5, 4);
  auto m = run(CausalMasker(), x, empty_for(x));
  // pos(i) = 2 + i.
  auto want = torch::tensor({1.f, 1.f, 1.f, 0.f, 0.f, 1.f, 1.f, 1.f, 1.f, 0.f, 1.f, 1.f, 1.f,
                             1.f, 1.f})
                  .view({1, 1, 3, 5});
  EXPECT_TRUE(torch::equal(m.dense(), want));
  // One query at the end sees everything.
  auto d = random_qkv(1, 1, 1, 1, 5, 4);
  EXPECT_TRUE(run(CausalMasker(), d, empty_for(d)).is_full());
}

TEST(CausalMasker, DropsFutureKeysFromPreviousMask) {
  auto x = random_qkv(1, 1, 1, 2, 4, 4);
  // Previous INDEX: row 0 lists {0, 3}, row 1 lists {1, 3}; pos = 2, 3.
  auto prev = Mask::from_row_wise({1, 1, 2, 4}, torch::tensor({0, 3, 1, 3}, torch::kLong).view({1, 1, 2, 2}));
  auto m = run(CausalMasker(), x, prev);
  EXPECT_TRUE(m.is_index());
  EXPECT_EQ(active(m, 0, 0, 0), (std::vector<int64_t>{0}));
  EXPECT_EQ(active(m, 0, 0, 1), (std::vector<int64_t>{1, 3}));
}

// ---- sink ---------------------------------------------------------------------------------

TEST(SinkMasker, PatternAndFullRule) {
  // b = 1, h = 4, h_kv = 2, sq = 2, sk = 64: Sink(4) -> keys 0..3, density 4 / 64.
  auto x = random_qkv(1, 4, 2, 2, 64, 16);
  auto m = run(SinkMasker(SinkMaskerOptions(4)), x, empty_for(x));
  for (int64_t h = 0; h < 4; ++h) {
    for (int64_t i = 0; i < 2; ++i) EXPECT_EQ(active(m, 0, h, i), (std::vector<int64_t>{0, 1, 2, 3}));
  }
  EXPECT_DOUBLE_EQ(m.density(), 0.0625);
  EXPECT_TRUE(run(SinkMasker(SinkMaskerOptions(64)), x, empty_for(x)).is_full());
  EXPECT_FALSE(run(SinkMasker(SinkMaskerOptions(63)), x, empty_for(x)).is_full());
  // On a dense previous mask: sink entries set to 1, the rest kept.
  auto prev = Mask::from_dense({1, 4, 2, 64}, torch::full({1, 4, 2, 64}, 0.25));
  auto md = run(SinkMasker(SinkMaskerOptions(2)), x, prev).dense();
  EXPECT_EQ(md[0][0][0][1].item<float>(), 1.0f);
  EXPECT_EQ(md[0][0][0][2].item<float>(), 0.25f);
}

// ---- oracle top-k -------------------------------------------------------------------------

// The top-k columns of unscaled q.k + mask by a plain loop, skipping `skip` columns.
std::vector<int64_t> naive_topk(const torch::Tensor& q, const torch::Tensor& k, int64_t kk,
                                const std::vector<int64_t>& skip, const torch::Tensor& add = {}) {
  auto s = torch::mv(k, q);
  if (add.defined()) s = s + add;
  for (int64_t j : skip) s[j] = -1e30;
  auto idx = std::get<1>(s.topk(kk));
  std::vector<int64_t> out(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + kk);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(OracleTopKMasker, IntegerAndFractionHeavySizes) {
  auto x = random_qkv(2, 4, 2, 3, 40, 8, 1);
  for (MaskerSize size : {MaskerSize(5), MaskerSize(0.125)}) {
    auto m = run(OracleTopKMasker(OracleTopKMaskerOptions(size)), x, empty_for(x));
    EXPECT_TRUE(m.is_index());
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t h = 0; h < 4; ++h) {
        for (int64_t i = 0; i < 3; ++i) {
          EXPECT_EQ(active(m, b, h, i), naive_topk(x.q[b][h][i], x.k[b][h / 2], 5, {}));
        }
      }
    }
  }
  EXPECT_TRUE(run(OracleTopKMasker(OracleTopKMaskerOptions(40)), x, empty_for(x)).is_full());
  EXPECT_TRUE(run(OracleTopKMasker(OracleTopKMaskerOptions(1.0)), x, empty_for(x)).is_full());
}

TEST(OracleTopKMasker, AvoidsPreviouslyActiveKeysAndMerges) {
  auto x = random_qkv(1, 2, 2, 2, 32, 8, 2);
  auto prev = run(SinkMasker(SinkMaskerOptions(3)), x, empty_for(x));
  auto m = run(OracleTopKMasker(OracleTopKMaskerOptions(4)), x, prev);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      auto want = naive_topk(x.q[0][h][i], x.k[0][h], 4, {0, 1, 2});
      want.insert(want.begin(), {0, 1, 2});
      std::sort(want.begin(), want.end());
      EXPECT_EQ(active(m, 0, h, i), want);
    }
  }
  EXPECT_DOUBLE_EQ(m.density(), 7.0 / 32.0);
}

TEST(OracleTopKMasker, AttentionMaskSteersTheChoice) {
  auto x = random_qkv(1, 2, 1, 2, 24, 8, 3);
  // -inf on even keys: the top-k are all odd.
  auto am = torch::zeros({1, 1, 2, 24});
  am.index_put_({"...", torch::arange(0, 24, 2)}, -std::numeric_limits<float>::infinity());
  auto m = run(OracleTopKMasker(OracleTopKMaskerOptions(5)), x, empty_for(x), am);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      auto cols = active(m, 0, h, i);
      EXPECT_EQ(cols.size(), 5u);
      for (int64_t c : cols) EXPECT_EQ(c % 2, 1);
      EXPECT_EQ(cols, naive_topk(x.q[0][h][i], x.k[0][0], 5, {}, am[0][0][i]));
    }
  }
}

TEST(OracleTopKMasker, ObservedDecodeShapeAddsSixKeys) {
  // Sink(4) + Local(8) + OracleTopK(0.1) at sk = 64: 4 + 8 + int(6.4) = 18 keys per query.
  auto x = random_qkv(1, 4, 2, 2, 64, 16, 4);
  auto ra = ResearchAttention::from_json(
      R"([{"type":"sink","sink_size":4},{"type":"local","window_size":8},
          {"type":"oracle_top_k","heavy_size":0.1}])");
  MaskerState s;
  auto m = ra.build_mask(x.q, x.k, x.v, {}, 0.25, 0.0, s, 0);
  for (int64_t h = 0; h < 4; ++h) {
    for (int64_t i = 0; i < 2; ++i) EXPECT_EQ(active(m, 0, h, i).size(), 18u);
  }
}

TEST(OracleTopKMasker, LongQueryBlocksMatchOneShot) {
  // Tk * B * H large enough to split the queries into blocks of scores.
  auto x = random_qkv(1, 8, 8, 70, 8192, 16, 5);
  auto m = run(OracleTopKMasker(OracleTopKMaskerOptions(16)), x, empty_for(x));
  auto s = torch::matmul(x.q, x.k.transpose(-2, -1));
  auto want = std::get<1>(s.topk(16, -1));
  auto want_dense = torch::zeros_like(s).scatter_(-1, want, 1.0);
  EXPECT_TRUE(torch::equal(m.dense(), want_dense));
}

// ---- oracle top-p -------------------------------------------------------------------------

TEST(OracleTopPMasker, ThresholdOnTheDocumentedRule) {
  // One row, scaling 1: E = exp(s - max) for s = log([0.5, 0.3, 0.15, 0.05]) -> shares
  // 0.5, 0.8, 0.95, 1.0. top_p = 0.7: the first share > 0.7 is the second key -> {0, 1}.
  auto q = torch::ones({1, 1, 1, 1});
  auto k = torch::log(torch::tensor({0.5f, 0.3f, 0.15f, 0.05f})).view({1, 1, 4, 1});
  auto v = torch::zeros({1, 1, 4, 1});
  MaskerState st;
  auto prev = Mask::empty({1, 1, 1, 4});
  auto pick = [&](double p) {
    return active(OracleTopPMasker(OracleTopPMaskerOptions(p))
                      .add_mask(k, q, v, {}, 1.0, 0.0, st, prev),
                  0, 0, 0);
  };
  EXPECT_EQ(pick(0.7), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(pick(0.5), (std::vector<int64_t>{0, 1}));  // share 0.5 is not > 0.5
  EXPECT_EQ(pick(0.49), (std::vector<int64_t>{0}));
  EXPECT_EQ(pick(0.0), (std::vector<int64_t>{0}));     // the largest key only
  EXPECT_EQ(pick(0.9), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_TRUE(OracleTopPMasker(OracleTopPMaskerOptions(1.0))
                  .add_mask(k, q, v, {}, 1.0, 0.0, st, prev)
                  .is_full());
  // Previously active keys are left out of the ranking: with key 0 active, 0.7 of the rest
  // (0.3, 0.15, 0.05 -> shares 0.6, 0.9, 1.0) takes keys 1 and 2.
  auto p0 = Mask::from_row_wise({1, 1, 1, 4}, torch::zeros({1, 1, 1, 1}, torch::kLong));
  auto m = OracleTopPMasker(OracleTopPMaskerOptions(0.7)).add_mask(k, q, v, {}, 1.0, 0.0, st, p0);
  EXPECT_EQ(active(m, 0, 0, 0), (std::vector<int64_t>{0, 1, 2}));
}

TEST(OracleTopPMasker, TiesAreKept) {
  auto q = torch::ones({1, 1, 1, 1});
  auto k = torch::zeros({1, 1, 5, 1});  // all scores equal: every key ties with the threshold
  auto v = torch::zeros({1, 1, 5, 1});
  MaskerState st;
  auto m = OracleTopPMasker(OracleTopPMaskerOptions(0.3))
               .add_mask(k, q, v, {}, 1.0, 0.0, st, Mask::empty({1, 1, 1, 5}));
  EXPECT_EQ(active(m, 0, 0, 0).size(), 5u);
}

}  // namespace
