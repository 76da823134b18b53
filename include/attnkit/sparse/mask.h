#pragma once
// Sparse-attention masks: the mask a masker produces over the scores of one attention call,
// kept in whichever of four forms is cheapest (whole, nothing, a dense tensor or CSR lists).

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace attnkit {
namespace sparse {

/// CSR lists of a mask's active entries, over the flattened mask (see `Mask::index`).
struct MaskIndex {
  /// [E] int64 flat positions into the mask's prod(shape) entries: row * n + column, where
  /// row runs over the leading dims prod(shape[:-1]) and n = shape[-1].
  torch::Tensor indices;
  /// [rows + 1] int64 offsets: the entries of row r are indices[ptr[r] : ptr[r + 1]].
  torch::Tensor ptr;
  /// [E] the weight of each entry, in the mask's dtype.
  torch::Tensor data;
};

/// A float mask of shape (*, n), typically [B, H, Tq, Tk] over attention scores: 0 marks an
/// inactive entry, a value p in (0, 1] an active one of weight p (a sampling probability, which
/// `apply_inverse` divides by). Immutable; tensors are shared between copies, never mutated.
/// Stored in one of four forms: FULL and EMPTY keep no tensor, DENSE keeps the tensor, INDEX
/// keeps CSR lists (`MaskIndex`). Every operation is composed of torch ops (no raw pointers),
/// so a mask lives on any device; stored values have the mask's dtype.
/// Example:
///   auto m = sparse::Mask::from_row_wise({B, H, Tq, Tk}, topk_idx);  // [B, H, Tq, K] lists
///   auto scores_kept = m.apply(scores);
///   auto m2 = m.merge(sparse::Mask::full({B, H, Tq, Tk}));            // FULL
class Mask {
 public:
  /// How a mask is stored.
  enum class Form {
    /// Every entry active with weight 1; no tensor stored.
    kFull,
    /// No entry active; no tensor stored.
    kEmpty,
    /// A tensor of the mask's shape.
    kDense,
    /// CSR lists over the flattened mask (`MaskIndex`).
    kIndex,
  };

  /// The mask with no active entry. shape: (*, n), at least 1-D, sizes >= 0; dtype: a floating
  /// type.
  static Mask empty(torch::IntArrayRef shape,
                    torch::Dtype dtype = torch::kFloat,
                    torch::Device device = torch::kCPU);

  /// The mask with every entry active at weight 1. Arguments as for `empty`.
  static Mask full(torch::IntArrayRef shape,
                   torch::Dtype dtype = torch::kFloat,
                   torch::Device device = torch::kCPU);

  /// A DENSE mask holding `dense` (converted to dtype, on dense's device). dense must have
  /// exactly `shape`; its values are kept as given (not checked against [0, 1]).
  static Mask from_dense(torch::IntArrayRef shape,
                         const torch::Tensor& dense,
                         torch::Dtype dtype = torch::kFloat);

  /// An INDEX mask from CSR lists (see `MaskIndex`), on the device of indices.
  ///   indices: [E] integer flat positions in [0, prod(shape)),
  ///   ptr: [rows + 1] integer, ptr[0] == 0, nondecreasing, ptr[rows] == E, and every entry of
  ///        row r (per ptr) must lie in row r (indices / n == r),
  ///   data: [E] weights, or undefined for all 1.0.
  /// Duplicated positions are allowed; `dense` keeps the last of them.
  static Mask from_indices(torch::IntArrayRef shape,
                           const torch::Tensor& indices,
                           const torch::Tensor& ptr,
                           const torch::Tensor& data = {},
                           torch::Dtype dtype = torch::kFloat);

  /// A mask from per-row column lists (top-k selections), on the device of row_idx.
  ///   row_idx: [*, k] integer columns in [0, n), k >= 1, its leading dims equal to shape[:-1];
  ///            -1 marks an unused slot, allowed only with use_padding (and then dropped),
  ///   data: the shape of row_idx, the weight of each listed column; undefined for all 1.0.
  /// sparse = true gives an INDEX mask: every row's list in the given order, padding dropped,
  /// duplicated columns kept as separate entries. sparse = false gives a DENSE mask: the lists
  /// written into zeros, a duplicated column keeping its last listed weight. Unlike
  /// sparse-attention-hub, use_padding is honoured by the dense mode too.
  static Mask from_row_wise(torch::IntArrayRef shape,
                            const torch::Tensor& row_idx,
                            const torch::Tensor& data = {},
                            torch::Dtype dtype = torch::kFloat,
                            bool use_padding = false,
                            bool sparse = true);

  /// Whether the mask is stored as FULL (every entry active at weight 1).
  bool is_full() const { return form_ == Form::kFull; }
  /// Whether the mask is stored as EMPTY (no entry active).
  bool is_empty() const { return form_ == Form::kEmpty; }
  /// Whether the mask is stored as a dense tensor.
  bool is_dense() const { return form_ == Form::kDense; }
  /// Whether the mask is stored as CSR lists.
  bool is_index() const { return form_ == Form::kIndex; }
  /// How the mask is stored.
  Form form() const { return form_; }
  /// Whether each row's stored columns are known to be sorted and distinct: true for FULL,
  /// EMPTY, DENSE and for INDEX masks made by `merge`; false for other INDEX masks (which may
  /// list a column twice). Lets consumers of the lists skip a deduplication.
  bool rows_unique() const { return form_ != Form::kIndex || rows_unique_; }
  /// The mask's shape (*, n).
  const std::vector<int64_t>& shape() const { return shape_; }
  /// The dtype of the mask's values.
  torch::Dtype dtype() const { return dtype_; }
  /// The device of the mask's tensors.
  torch::Device device() const { return device_; }

  /// The mask as a tensor of its shape: ones for FULL, zeros for EMPTY, the stored tensor for
  /// DENSE (shared, not copied), and for INDEX zeros with each entry's weight written at its
  /// position (a duplicated position keeps its last entry's weight, as in the dense mode of
  /// `from_row_wise`).
  torch::Tensor dense() const;

  /// The mask as CSR lists: for FULL every position in order with weight 1; for EMPTY no entry
  /// and ptr all zero; for DENSE the positions of values > 0 in row-major order with their
  /// values; for INDEX the stored lists.
  MaskIndex index() const;

  /// The fraction of active entries: 1 for FULL, 0 for EMPTY, count(values > 0) / numel for
  /// DENSE, stored entries / numel for INDEX (duplicates counted). 0 for a DENSE or INDEX mask
  /// of no entries.
  double density() const;

  /// x * mask. FULL and EMPTY return x itself (EMPTY, like FULL, means "no masking was
  /// decided"), other forms x * dense() in x's dtype. x must have the mask's shape.
  torch::Tensor apply(const torch::Tensor& x) const;

  /// x divided by the mask where it is nonzero, zero where it is zero:
  ///   x * (1 / (m + 1e-6)) where m != 0, else 0
  /// (undoing sampling probabilities). FULL and EMPTY return x itself; the result has x's
  /// dtype. x must have the mask's shape.
  torch::Tensor apply_inverse(const torch::Tensor& x) const;

  /// Row sums of `apply_inverse(x)` over the last dim, keepdim: [*, 1] (FULL and EMPTY: plain
  /// row sums of x). x must have the mask's shape. sparse-attention-hub's apply_inv_mask_sum.
  torch::Tensor row_sum_inverse(const torch::Tensor& x) const;

  /// The union of two masks of the same shape (and device, where both store tensors), weights
  /// added and capped at 1 (so a sampled entry p < 1 that overlaps an active one becomes 1):
  ///   either FULL -> FULL; both EMPTY -> EMPTY; one EMPTY -> the other;
  ///   both INDEX -> INDEX, each row's columns sorted, each mask's duplicated positions first
  ///                 reduced to their last entry (as `dense` does), weights clamp(a + b, 0, 1);
  ///   otherwise -> DENSE clamp(dense() + other.dense(), 0, 1).
  /// The result has this mask's dtype.
  Mask merge(const Mask& other) const;

 private:
  Mask(std::vector<int64_t> shape, torch::Dtype dtype, torch::Device device, Form form);

  int64_t numel() const;
  int64_t rows() const;
  void check_same_shape(const char* fn, const torch::Tensor& x) const;

  std::vector<int64_t> shape_;
  torch::Dtype dtype_;
  torch::Device device_;
  Form form_;
  torch::Tensor dense_;  // DENSE only
  MaskIndex index_;      // INDEX only
  bool rows_unique_ = false;  // INDEX only: see rows_unique()
};

/// A mask's active entries as padded per-row lists: cols [*, K] int64 column indices (-1 pads a
/// row shorter than the longest), data [*, K] their weights (0 at padding), * = shape[:-1].
/// K = 0 for EMPTY; FULL lists every column. A column listed twice in an INDEX row appears once,
/// with its last weight (as `Mask::dense` reads it). Cost O(entries log entries), never
/// O(rows * n) for INDEX.
struct RowLists {
  torch::Tensor cols;
  torch::Tensor data;
};
RowLists row_lists(const Mask& mask);

/// The mask with each row's repeated columns kept once (the last entry's weight, as `dense`
/// reads them) and the columns sorted: INDEX stays INDEX, other forms are returned unchanged.
/// Samplers draw with replacement; a key drawn twice must still count once in the attention.
Mask without_duplicates(const Mask& mask);

}  // namespace sparse
}  // namespace attnkit
