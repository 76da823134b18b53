// Tests for include/attnkit/sparse/mask.h: the four forms, their conversions, applying, merging
// and every input check, against hand-written expected values.

#include <attnkit/sparse/mask.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "sparse/sparse_test_util.h"

namespace {

using namespace attnkit::sparse::test_util;  // NOLINT

using attnkit::sparse::Mask;
using attnkit::sparse::MaskIndex;
using ::testing::HasSubstr;

void expect_close(const torch::Tensor& got, const torch::Tensor& want) {
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(got.sizes() == want.sizes() && torch::allclose(got, want, 1e-6, 1e-7))
      << "got\n" << got << "\nwant\n" << want;
}

// ---- Forms, getters ---------------------------------------------------------------------------

TEST(MaskForms, EmptyGetters) {
  Mask m = Mask::empty({2, 3});
  EXPECT_TRUE(m.is_empty());
  EXPECT_FALSE(m.is_full() || m.is_dense() || m.is_index());
  EXPECT_EQ(m.form(), Mask::Form::kEmpty);
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(m.dtype(), torch::kFloat);
  EXPECT_EQ(m.device(), torch::Device(torch::kCPU));
  expect_equal(m.dense(), torch::zeros({2, 3}));
  MaskIndex ix = m.index();
  expect_equal(ix.indices, torch::empty({0}, torch::kLong));
  expect_equal(ix.ptr, i64({0, 0, 0}));
  expect_equal(ix.data, torch::empty({0}));
  EXPECT_EQ(m.density(), 0.0);
}

TEST(MaskForms, FullGetters) {
  Mask m = Mask::full({2, 3}, torch::kDouble);
  EXPECT_TRUE(m.is_full());
  EXPECT_FALSE(m.is_empty() || m.is_dense() || m.is_index());
  EXPECT_EQ(m.dtype(), torch::kDouble);
  expect_equal(m.dense(), torch::ones({2, 3}, torch::kDouble));
  MaskIndex ix = m.index();
  expect_equal(ix.indices, i64({0, 1, 2, 3, 4, 5}));
  expect_equal(ix.ptr, i64({0, 3, 6}));
  expect_equal(ix.data, torch::ones({6}, torch::kDouble));
  EXPECT_EQ(m.density(), 1.0);
}

TEST(MaskForms, DenseToIndex2D) {
  auto d = f32({0, 0.5, 0, 1, 0, 0, 0, 0, 0.25, 0, 0, 1}, {3, 4});
  Mask m = Mask::from_dense({3, 4}, d);
  EXPECT_TRUE(m.is_dense());
  expect_equal(m.dense(), d);
  MaskIndex ix = m.index();
  expect_equal(ix.indices, i64({1, 3, 8, 11}));
  expect_equal(ix.ptr, i64({0, 2, 2, 4}));
  expect_equal(ix.data, f32({0.5, 1, 0.25, 1}, {4}));
  EXPECT_DOUBLE_EQ(m.density(), 4.0 / 12.0);
  // And back.
  Mask back = Mask::from_indices({3, 4}, ix.indices, ix.ptr, ix.data);
  EXPECT_TRUE(back.is_index());
  expect_equal(back.dense(), d);
  EXPECT_DOUBLE_EQ(back.density(), 4.0 / 12.0);
}

TEST(MaskForms, IndexToDense4D) {
  // [B=2, H=1, Tq=2, Tk=3]: rows 0..3.
  auto indices = i64({0, 2, 5, 9, 10, 11});
  auto ptr = i64({0, 2, 3, 3, 6});
  auto data = f32({1, 0.5, 0.75, 1, 0.125, 1}, {6});
  Mask m = Mask::from_indices({2, 1, 2, 3}, indices, ptr, data);
  auto want = f32({1, 0, 0.5, 0, 0, 0.75, 0, 0, 0, 1, 0.125, 1}, {2, 1, 2, 3});
  expect_equal(m.dense(), want);
  // Round trip through the dense form gives the same lists.
  MaskIndex ix = Mask::from_dense({2, 1, 2, 3}, m.dense()).index();
  expect_equal(ix.indices, indices);
  expect_equal(ix.ptr, ptr);
  expect_equal(ix.data, data);
}

TEST(MaskForms, DenseRoundTrip4DRandom) {
  torch::manual_seed(0);
  auto d = torch::rand({2, 3, 4, 5});
  d = torch::where(d > 0.6, d, torch::zeros_like(d));
  Mask m = Mask::from_dense({2, 3, 4, 5}, d);
  MaskIndex ix = m.index();
  EXPECT_EQ(ix.ptr.numel(), 2 * 3 * 4 + 1);
  EXPECT_EQ(ix.ptr[-1].item<int64_t>(), d.gt(0).sum().item<int64_t>());
  Mask back = Mask::from_indices({2, 3, 4, 5}, ix.indices, ix.ptr, ix.data);
  expect_equal(back.dense(), d);
  EXPECT_DOUBLE_EQ(back.density(), m.density());
}

TEST(MaskForms, FromDenseConvertsDtype) {
  Mask m = Mask::from_dense({2}, f32({0.5, 0}, {2}), torch::kDouble);
  expect_equal(m.dense(), torch::tensor({0.5, 0.0}, torch::kDouble));
  EXPECT_EQ(m.index().data.scalar_type(), torch::kDouble);
}

TEST(MaskForms, FromIndicesUndefinedDataIsOnes) {
  Mask m = Mask::from_indices({2, 2}, i64({1, 2}), i64({0, 1, 2}));
  expect_equal(m.index().data, torch::ones({2}));
  expect_equal(m.dense(), f32({0, 1, 1, 0}, {2, 2}));
  EXPECT_DOUBLE_EQ(m.density(), 0.5);
}

TEST(MaskForms, IndexDuplicatesDenseKeepsLast) {
  Mask m = Mask::from_indices({1, 3}, i64({1, 1}), i64({0, 2}), f32({0.25, 0.5}, {2}));
  expect_equal(m.dense(), f32({0, 0.5, 0}, {1, 3}));
  EXPECT_DOUBLE_EQ(m.density(), 2.0 / 3.0);  // entries counted, duplicates included
}

TEST(MaskForms, DensityOfEachForm) {
  EXPECT_EQ(Mask::empty({4, 8}).density(), 0.0);
  EXPECT_EQ(Mask::full({4, 8}).density(), 1.0);
  EXPECT_DOUBLE_EQ(Mask::from_dense({2, 4}, f32({1, 0, 0.5, 0, 0, 0, 0, 0.1f}, {2, 4})).density(),
                   3.0 / 8.0);
  EXPECT_DOUBLE_EQ(Mask::from_indices({2, 4}, i64({0, 5}), i64({0, 1, 2})).density(), 2.0 / 8.0);
  EXPECT_DOUBLE_EQ(Mask::from_row_wise({2, 4}, i64({0, 1, 2, 3}, {2, 2})).density(), 0.5);
  EXPECT_EQ(Mask::from_dense({0, 4}, torch::zeros({0, 4})).density(), 0.0);
}

TEST(MaskForms, ShapeAndDtypeErrors) {
  EXPECT_THAT(error_of([] { Mask::empty({}); }),
              HasSubstr("Mask::empty: shape must have at least 1 dim"));
  EXPECT_THAT(error_of([] { Mask::full({2, -1}); }),
              HasSubstr("Mask::full: shape sizes must be >= 0, got [2, -1]"));
  EXPECT_THAT(error_of([] { Mask::full({2}, torch::kLong); }),
              HasSubstr("Mask::full: dtype must be a floating type, got Long"));
}

TEST(MaskForms, FromDenseShapeError) {
  EXPECT_THROW(Mask::from_dense({2, 4, 8}, torch::zeros({2, 4, 7})), c10::Error);
  EXPECT_THAT(error_of([] { Mask::from_dense({2, 4, 8}, torch::zeros({2, 4, 7})); }),
              HasSubstr("Mask::from_dense: dense must have shape [2, 4, 8], got [2, 4, 7]"));
  EXPECT_THAT(error_of([] { Mask::from_dense({2}, torch::Tensor()); }),
              HasSubstr("Mask::from_dense: dense must be defined"));
}

// ---- from_indices checks -----------------------------------------------------------------------

TEST(MaskFromIndices, Errors) {
  EXPECT_THROW(Mask::from_indices({2, 3}, i64({0}), i64({0, 1})), c10::Error);
  EXPECT_THAT(error_of([] { Mask::from_indices({2, 3}, i64({0}), i64({0, 1})); }),
              HasSubstr("Mask::from_indices: ptr must have rows + 1 = 3 entries for shape [2, 3], "
                        "got 2"));
  EXPECT_THAT(
      error_of([] { Mask::from_indices({2, 3}, i64({0, 4}), i64({0, 1, 2}), f32({1}, {1})); }),
      HasSubstr("Mask::from_indices: data must have shape [2] like indices, got [1]"));
  EXPECT_THAT(error_of([] { Mask::from_indices({2, 3}, i64({0, 6}), i64({0, 1, 2})); }),
              HasSubstr("Mask::from_indices: indices must lie in [0, 6) for shape [2, 3], got "
                        "values in [0, 6]"));
  EXPECT_THAT(error_of([] { Mask::from_indices({2, 3}, i64({-1, 4}), i64({0, 1, 2})); }),
              HasSubstr("indices must lie in [0, 6)"));
  EXPECT_THAT(error_of([] { Mask::from_indices({2, 3}, i64({0, 4}), i64({0, 1, 3})); }),
              HasSubstr("Mask::from_indices: ptr[-1] must equal indices.numel() = 2, got 3"));
  EXPECT_THAT(error_of([] { Mask::from_indices({2, 3}, i64({0, 4}), i64({1, 1, 2})); }),
              HasSubstr("Mask::from_indices: ptr[0] must be 0, got 1"));
  EXPECT_THAT(
      error_of([] { Mask::from_indices({3, 3}, i64({0, 1, 4}), i64({0, 3, 1, 3})); }),
      HasSubstr("Mask::from_indices: ptr must be nondecreasing, got ptr[1] = 3 > ptr[2] = 1"));
  EXPECT_THAT(error_of([] { Mask::from_indices({2, 3}, i64({0, 1}), i64({0, 1, 2})); }),
              HasSubstr("Mask::from_indices: entry 1 (flat index 1) lies in row 0 but ptr "
                        "places it in row 1"));
  EXPECT_THAT(error_of([] {
                Mask::from_indices({2, 3}, torch::zeros({1}), i64({0, 1, 1}));
              }),
              HasSubstr("Mask::from_indices: indices must be an integer tensor, got Float"));
  EXPECT_THAT(error_of([] { Mask::from_indices({2, 3}, i64({0}, {1, 1}), i64({0, 1, 1})); }),
              HasSubstr("Mask::from_indices: indices must be 1-D, got shape [1, 1]"));
}

TEST(MaskFromIndices, EmptyLists) {
  Mask m = Mask::from_indices({2, 3}, torch::empty({0}, torch::kLong), i64({0, 0, 0}));
  EXPECT_TRUE(m.is_index());
  expect_equal(m.dense(), torch::zeros({2, 3}));
  EXPECT_EQ(m.density(), 0.0);
}

// ---- from_row_wise ------------------------------------------------------------------------------

TEST(MaskFromRowWise, SparseMode) {
  Mask m =
      Mask::from_row_wise({2, 4}, i64({3, 1, 0, 2}, {2, 2}), f32({0.5, 1, 0.25, 0.75}, {2, 2}));
  EXPECT_TRUE(m.is_index());
  MaskIndex ix = m.index();
  expect_equal(ix.indices, i64({3, 1, 4, 6}));  // given order within a row
  expect_equal(ix.ptr, i64({0, 2, 4}));
  expect_equal(ix.data, f32({0.5, 1, 0.25, 0.75}, {4}));
  expect_equal(m.dense(), f32({0, 1, 0, 0.5, 0.25, 0, 0.75, 0}, {2, 4}));
}

TEST(MaskFromRowWise, DenseMode) {
  Mask m = Mask::from_row_wise({2, 4}, i64({3, 1, 0, 2}, {2, 2}), f32({0.5, 1, 0.25, 0.75}, {2, 2}),
                               torch::kFloat, /*use_padding=*/false, /*sparse=*/false);
  EXPECT_TRUE(m.is_dense());
  expect_equal(m.dense(), f32({0, 1, 0, 0.5, 0.25, 0, 0.75, 0}, {2, 4}));
}

TEST(MaskFromRowWise, UndefinedDataIsOnes) {
  Mask m = Mask::from_row_wise({2, 3}, i64({2, 0}, {2, 1}));
  expect_equal(m.index().data, torch::ones({2}));
  expect_equal(m.dense(), f32({0, 0, 1, 1, 0, 0}, {2, 3}));
}

TEST(MaskFromRowWise, PaddingSparse) {
  Mask m = Mask::from_row_wise({3, 4}, i64({1, -1, -1, -1, 2, 0}, {3, 2}),
                               f32({0.5, 9, 9, 9, 1, 0.25}, {3, 2}), torch::kFloat,
                               /*use_padding=*/true);
  MaskIndex ix = m.index();
  expect_equal(ix.indices, i64({1, 10, 8}));
  expect_equal(ix.ptr, i64({0, 1, 1, 3}));
  expect_equal(ix.data, f32({0.5, 1, 0.25}, {3}));
  expect_equal(m.dense(), f32({0, 0.5, 0, 0, 0, 0, 0, 0, 0.25, 0, 1, 0}, {3, 4}));
  EXPECT_DOUBLE_EQ(m.density(), 3.0 / 12.0);
}

TEST(MaskFromRowWise, PaddingDense) {
  Mask m = Mask::from_row_wise({3, 4}, i64({1, -1, -1, -1, 2, 0}, {3, 2}),
                               f32({0.5, 9, 9, 9, 1, 0.25}, {3, 2}), torch::kFloat,
                               /*use_padding=*/true, /*sparse=*/false);
  EXPECT_TRUE(m.is_dense());
  expect_equal(m.dense(), f32({0, 0.5, 0, 0, 0, 0, 0, 0, 0.25, 0, 1, 0}, {3, 4}));
}

TEST(MaskFromRowWise, DuplicatesSparseKeepsBoth) {
  Mask m = Mask::from_row_wise({1, 4}, i64({2, 2, 0}, {1, 3}), f32({0.25, 0.5, 1}, {1, 3}));
  MaskIndex ix = m.index();
  expect_equal(ix.indices, i64({2, 2, 0}));
  expect_equal(ix.ptr, i64({0, 3}));
  expect_equal(ix.data, f32({0.25, 0.5, 1}, {3}));
  EXPECT_DOUBLE_EQ(m.density(), 3.0 / 4.0);
  // dense() keeps the last weight of a duplicated position.
  expect_equal(m.dense(), f32({1, 0, 0.5, 0}, {1, 4}));
}

TEST(MaskFromRowWise, DuplicatesDenseCollapse) {
  Mask m = Mask::from_row_wise({1, 4}, i64({2, 2, 0}, {1, 3}), f32({0.25, 0.5, 1}, {1, 3}),
                               torch::kFloat, false, /*sparse=*/false);
  expect_equal(m.dense(), f32({1, 0, 0.5, 0}, {1, 4}));
  EXPECT_DOUBLE_EQ(m.density(), 2.0 / 4.0);
  expect_equal(m.index().indices, i64({0, 2}));
}

TEST(MaskFromRowWise, SingleElement) {
  Mask s = Mask::from_row_wise({1}, i64({0}, {1}));
  expect_equal(s.index().indices, i64({0}));
  expect_equal(s.index().ptr, i64({0, 1}));
  expect_equal(s.dense(), torch::ones({1}));
  Mask d = Mask::from_row_wise({1}, i64({0}, {1}), {}, torch::kFloat, false, false);
  expect_equal(d.dense(), torch::ones({1}));
  EXPECT_EQ(d.density(), 1.0);
}

TEST(MaskFromRowWise, MultiDim) {
  // [B=2, H=2, Tq=1, Tk=3], k = 1.
  auto idx = i64({0, 2, 1, 1}, {2, 2, 1, 1});
  auto w = f32({1, 0.5, 0.25, 1}, {2, 2, 1, 1});
  Mask m = Mask::from_row_wise({2, 2, 1, 3}, idx, w);
  expect_equal(m.index().indices, i64({0, 5, 7, 10}));
  expect_equal(m.index().ptr, i64({0, 1, 2, 3, 4}));
  expect_equal(m.dense(), f32({1, 0, 0, 0, 0, 0.5, 0, 0.25, 0, 0, 1, 0}, {2, 2, 1, 3}));
}

TEST(MaskFromRowWise, SparseAndDenseAgreeForUniqueIndices) {
  torch::manual_seed(0);
  // Unique columns per row: the first k of a random permutation.
  auto idx = torch::rand({2, 3, 4, 10}).argsort(/*dim=*/-1, /*descending=*/false).narrow(-1, 0, 4);
  auto w = torch::rand({2, 3, 4, 4}).clamp_min(0.01);
  Mask s = Mask::from_row_wise({2, 3, 4, 10}, idx, w);
  Mask d = Mask::from_row_wise({2, 3, 4, 10}, idx, w, torch::kFloat, false, false);
  EXPECT_TRUE(s.is_index());
  EXPECT_TRUE(d.is_dense());
  expect_equal(s.dense(), d.dense());
  EXPECT_DOUBLE_EQ(s.density(), 0.4);
  EXPECT_DOUBLE_EQ(d.density(), 0.4);
  // The dense form's lists are the sparse lists sorted within each row.
  expect_equal(d.index().indices, std::get<0>(s.index().indices.sort()));
  expect_equal(d.index().ptr, s.index().ptr);
}

TEST(MaskFromRowWise, Errors) {
  EXPECT_THROW(Mask::from_row_wise({2, 4}, i64({0, 1, 2}, {3, 1})), c10::Error);
  EXPECT_THAT(error_of([] { Mask::from_row_wise({2, 4}, i64({0, 1, 2}, {3, 1})); }),
              HasSubstr("Mask::from_row_wise: row_idx must have shape [2] + [k] for mask shape "
                        "[2, 4], got [3, 1]"));
  EXPECT_THAT(error_of([] { Mask::from_row_wise({2, 4}, i64({0, 1})); }),
              HasSubstr("row_idx must have shape [2] + [k] for mask shape [2, 4], got [2]"));
  EXPECT_THAT(
      error_of([] { Mask::from_row_wise({2, 4}, torch::empty({2, 0}, torch::kLong)); }),
      HasSubstr("Mask::from_row_wise: row_idx must list k >= 1 columns per row, got k = 0"));
  EXPECT_THAT(
      error_of([] { Mask::from_row_wise({2, 4}, i64({0, 1}, {2, 1}), torch::ones({2, 2})); }),
      HasSubstr("Mask::from_row_wise: data must have shape [2, 1] like row_idx, got [2, 2]"));
  EXPECT_THAT(error_of([] { Mask::from_row_wise({2, 4}, i64({0, 4}, {2, 1})); }),
              HasSubstr("Mask::from_row_wise: row_idx entries must be < n = 4, got 4"));
  EXPECT_THAT(error_of([] {
                Mask::from_row_wise({2, 4}, i64({0, -2}, {2, 1}), {}, torch::kFloat, true);
              }),
              HasSubstr("Mask::from_row_wise: row_idx entries must be >= -1 (padding), got -2"));
  EXPECT_THAT(error_of([] { Mask::from_row_wise({2, 4}, i64({0, -1}, {2, 1})); }),
              HasSubstr("Mask::from_row_wise: row_idx contains -1 padding entries but "
                        "use_padding is false"));
  EXPECT_THAT(error_of([] {
                Mask::from_row_wise({2, 4}, i64({0, -1}, {2, 1}), {}, torch::kFloat, false, false);
              }),
              HasSubstr("use_padding is false"));
  EXPECT_THAT(error_of([] { Mask::from_row_wise({2, 4}, torch::zeros({2, 1})); }),
              HasSubstr("Mask::from_row_wise: row_idx must be an integer tensor, got Float"));
}

// ---- apply, apply_inverse, row_sum_inverse -----------------------------------------------------

TEST(MaskApply, DenseAndIndex) {
  auto x = f32({1, 2, 3, 4, 5, 6}, {2, 3});
  auto d = f32({0, 0.5, 1, 0.25, 0, 0}, {2, 3});
  auto want = f32({0, 1, 3, 1, 0, 0}, {2, 3});
  expect_equal(Mask::from_dense({2, 3}, d).apply(x), want);
  MaskIndex ix = Mask::from_dense({2, 3}, d).index();
  expect_equal(Mask::from_indices({2, 3}, ix.indices, ix.ptr, ix.data).apply(x), want);
}

TEST(MaskApply, FullAndEmptyReturnInput) {
  auto x = f32({1, 2, 3, 4}, {2, 2});
  auto yf = Mask::full({2, 2}).apply(x);
  auto ye = Mask::empty({2, 2}).apply(x);
  EXPECT_TRUE(yf.is_same(x));
  EXPECT_TRUE(ye.is_same(x));
  EXPECT_TRUE(Mask::full({2, 2}).apply_inverse(x).is_same(x));
  EXPECT_TRUE(Mask::empty({2, 2}).apply_inverse(x).is_same(x));
}

TEST(MaskApply, AllOnesDense) {
  auto x = f32({1, -2, 3, 4}, {2, 2});
  Mask m = Mask::from_dense({2, 2}, torch::ones({2, 2}));
  expect_equal(m.apply(x), x);
  // 1 / (1 + 1e-6) in every entry.
  expect_close(m.apply_inverse(x), x.to(torch::kDouble).div(1.0 + 1e-6).to(torch::kFloat));
}

TEST(MaskApply, Inverse) {
  auto x = f32({1, 2, 3, 4, 5, 6}, {2, 3});
  Mask m = Mask::from_dense({2, 3}, f32({0, 0.5, 1, 0.25, 0, 0}, {2, 3}));
  auto want = torch::tensor({0.0, 2.0 / (0.5 + 1e-6), 3.0 / (1 + 1e-6), 4.0 / (0.25 + 1e-6), 0.0,
                             0.0})
                  .reshape({2, 3})
                  .to(torch::kFloat);
  expect_close(m.apply_inverse(x), want);
  EXPECT_EQ(m.apply_inverse(x)[1][1].item<float>(), 0.0f);
  // Same on the index form.
  MaskIndex ix = m.index();
  expect_close(Mask::from_indices({2, 3}, ix.indices, ix.ptr, ix.data).apply_inverse(x), want);
}

TEST(MaskApply, KeepsInputDtype) {
  auto x = torch::ones({2, 2}, torch::kDouble);
  Mask m = Mask::from_dense({2, 2}, f32({0.5, 0, 0, 1}, {2, 2}));
  expect_equal(m.apply(x), torch::tensor({0.5, 0.0, 0.0, 1.0}, torch::kDouble).reshape({2, 2}));
  EXPECT_EQ(m.apply_inverse(x).scalar_type(), torch::kDouble);
}

TEST(MaskApply, ShapeErrors) {
  Mask m = Mask::from_dense({2, 3}, torch::ones({2, 3}));
  EXPECT_THROW(m.apply(torch::ones({3, 2})), c10::Error);
  EXPECT_THAT(error_of([&] { m.apply(torch::ones({3, 2})); }),
              HasSubstr("Mask::apply: x must have shape [2, 3], got [3, 2]"));
  EXPECT_THAT(error_of([&] { m.apply_inverse(torch::ones({2, 4})); }),
              HasSubstr("Mask::apply_inverse: x must have shape [2, 3], got [2, 4]"));
  EXPECT_THAT(error_of([] { Mask::full({2, 3}).apply(torch::ones({2})); }),
              HasSubstr("Mask::apply: x must have shape [2, 3], got [2]"));
}

TEST(MaskRowSumInverse, FullAndEmpty) {
  auto x = f32({1, 2, 3, 4, 5, 6}, {2, 3});
  expect_equal(Mask::full({2, 3}).row_sum_inverse(x), f32({6, 15}, {2, 1}));
  expect_equal(Mask::empty({2, 3}).row_sum_inverse(x), f32({6, 15}, {2, 1}));
}

TEST(MaskRowSumInverse, Sparse) {
  auto x = f32({1, 2, 3, 4, 5, 6}, {1, 2, 3});
  Mask m = Mask::from_row_wise({1, 2, 3}, i64({1, 2, 0, 0}, {1, 2, 2}),
                               f32({0.5, 1, 0.25, 0.25}, {1, 2, 2}));
  // Row 0: 2 / 0.5 + 3 / 1; row 1: column 0 listed twice, dense() keeps 0.25 -> 4 / 0.25.
  auto want = torch::tensor({2.0 / (0.5 + 1e-6) + 3.0 / (1 + 1e-6), 4.0 / (0.25 + 1e-6)})
                  .reshape({1, 2, 1})
                  .to(torch::kFloat);
  expect_close(m.row_sum_inverse(x), want);
}

TEST(MaskRowSumInverse, ShapeError) {
  EXPECT_THAT(error_of([] { Mask::empty({2, 3}).row_sum_inverse(torch::ones({2, 2})); }),
              HasSubstr("Mask::row_sum_inverse: x must have shape [2, 3], got [2, 2]"));
}

// ---- merge -------------------------------------------------------------------------------------

TEST(MaskMerge, Basic) {
  Mask a = Mask::from_dense({2, 3}, f32({1, 0, 0, 0, 0.5, 0}, {2, 3}));
  Mask b = Mask::from_dense({2, 3}, f32({0, 0, 0.25, 0, 0, 1}, {2, 3}));
  Mask m = a.merge(b);
  EXPECT_TRUE(m.is_dense());
  expect_equal(m.dense(), f32({1, 0, 0.25, 0, 0.5, 1}, {2, 3}));
  EXPECT_DOUBLE_EQ(m.density(), 4.0 / 6.0);
}

TEST(MaskMerge, Capping) {
  Mask a = Mask::from_dense({1, 2}, f32({0.5, 0.25}, {1, 2}));
  Mask b = Mask::from_dense({1, 2}, f32({0.8f, 0.25}, {1, 2}));
  expect_equal(a.merge(b).dense(), f32({1, 0.5}, {1, 2}));
  // Index + index caps the same way.
  Mask ai = Mask::from_indices({1, 2}, i64({0, 1}), i64({0, 2}), f32({0.5, 0.25}, {2}));
  Mask bi = Mask::from_indices({1, 2}, i64({0, 1}), i64({0, 2}), f32({0.8f, 0.25}, {2}));
  Mask mi = ai.merge(bi);
  EXPECT_TRUE(mi.is_index());
  expect_equal(mi.index().data, f32({1, 0.5}, {2}));
}

TEST(MaskMerge, WithEmpty) {
  Mask a = Mask::from_dense({2, 2}, f32({0, 0.5, 1, 0}, {2, 2}));
  Mask e = Mask::empty({2, 2});
  Mask m1 = a.merge(e);
  Mask m2 = e.merge(a);
  EXPECT_TRUE(m1.is_dense());
  EXPECT_TRUE(m2.is_dense());
  expect_equal(m1.dense(), a.dense());
  expect_equal(m2.dense(), a.dense());
  EXPECT_TRUE(e.merge(Mask::empty({2, 2})).is_empty());
  Mask i = Mask::from_row_wise({2, 2}, i64({1, 0}, {2, 1}));
  EXPECT_TRUE(e.merge(i).is_index());
  expect_equal(e.merge(i).index().indices, i64({1, 2}));
}

TEST(MaskMerge, WithFull) {
  Mask a = Mask::from_dense({2, 2}, f32({0, 0.5, 1, 0}, {2, 2}));
  EXPECT_TRUE(a.merge(Mask::full({2, 2})).is_full());
  EXPECT_TRUE(Mask::full({2, 2}).merge(a).is_full());
  EXPECT_TRUE(Mask::full({2, 2}).merge(Mask::empty({2, 2})).is_full());
  EXPECT_TRUE(Mask::empty({2, 2}).merge(Mask::full({2, 2})).is_full());
  expect_equal(Mask::empty({2, 2}).merge(Mask::full({2, 2})).dense(), torch::ones({2, 2}));
}

TEST(MaskMerge, NDim) {
  // [2, 1, 2, 3]: a dense, b index.
  Mask a = Mask::from_dense({2, 1, 2, 3}, f32({1, 0, 0, 0, 0.5, 0, 0, 0, 0, 0, 0, 0.25},
                                              {2, 1, 2, 3}));
  Mask b = Mask::from_row_wise({2, 1, 2, 3}, i64({0, 1, 2, 2}, {2, 1, 2, 1}),
                               f32({0.5, 0.75, 0.5, 0.5}, {2, 1, 2, 1}));
  Mask m = a.merge(b);
  EXPECT_TRUE(m.is_dense());
  expect_equal(m.dense(),
               f32({1, 0, 0, 0, 1, 0, 0, 0, 0.5, 0, 0, 0.75}, {2, 1, 2, 3}));
}

TEST(MaskMerge, IndexUnionEqualsDenseMerge) {
  // Row 0: a {0: 0.5, 3: 1}, b {3: 0.25, 1: 0.5}; row 1: a {}, b {2: 1}; row 2: a {2: 0.5}, b {}.
  Mask a = Mask::from_indices({3, 4}, i64({3, 0, 10}), i64({0, 2, 2, 3}), f32({1, 0.5, 0.5}, {3}));
  Mask b = Mask::from_indices({3, 4}, i64({3, 1, 6}), i64({0, 2, 3, 3}),
                              f32({0.25, 0.5, 1}, {3}));
  Mask m = a.merge(b);
  EXPECT_TRUE(m.is_index());
  MaskIndex ix = m.index();
  expect_equal(ix.indices, i64({0, 1, 3, 6, 10}));  // sorted within each row
  expect_equal(ix.ptr, i64({0, 3, 4, 5}));
  expect_equal(ix.data, f32({0.5, 0.5, 1, 1, 0.5}, {5}));
  Mask dense_merge = Mask::from_dense({3, 4}, a.dense()).merge(Mask::from_dense({3, 4}, b.dense()));
  EXPECT_TRUE(dense_merge.is_dense());
  expect_equal(m.dense(), dense_merge.dense());
}

TEST(MaskMerge, IndexUnionRandomEqualsDenseMerge) {
  torch::manual_seed(1);
  const std::vector<int64_t> shape{2, 2, 3, 16};
  auto ia = torch::rand({2, 2, 3, 16}).argsort(/*dim=*/-1, /*descending=*/false).narrow(-1, 0, 5);
  auto ib = torch::rand({2, 2, 3, 16}).argsort(/*dim=*/-1, /*descending=*/false).narrow(-1, 0, 6);
  Mask a = Mask::from_row_wise(shape, ia, torch::rand({2, 2, 3, 5}));
  Mask b = Mask::from_row_wise(shape, ib, torch::rand({2, 2, 3, 6}));
  Mask m = a.merge(b);
  EXPECT_TRUE(m.is_index());
  EXPECT_FALSE(a.rows_unique());  // from_row_wise lists may repeat a column
  EXPECT_TRUE(m.rows_unique());   // merge sorts and deduplicates every row
  expect_equal(m.dense(), (a.dense() + b.dense()).clamp(0, 1));
  MaskIndex ix = m.index();
  // Lists sorted, and ptr agrees with a dense mask of the same entries.
  expect_equal(ix.indices, std::get<0>(ix.indices.sort()));
  expect_equal(ix.ptr, Mask::from_dense(shape, m.dense()).index().ptr);
}

TEST(MaskMerge, ShapeMismatch) {
  EXPECT_THROW(Mask::empty({2, 3}).merge(Mask::empty({3, 2})), c10::Error);
  EXPECT_THAT(error_of([] { Mask::full({2, 3}).merge(Mask::full({2, 4})); }),
              HasSubstr("Mask::merge: other must have shape [2, 3], got [2, 4]"));
}

}  // namespace
