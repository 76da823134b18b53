#include <attnkit/sparse/mask.h>

#include <torch/torch.h>

#include <utility>

namespace attnkit {
namespace sparse {

namespace {

using torch::indexing::Slice;

int64_t prod(torch::IntArrayRef sizes) {
  int64_t p = 1;
  for (int64_t s : sizes) p *= s;
  return p;
}

void check_shape(const char* fn, torch::IntArrayRef shape) {
  TORCH_CHECK(!shape.empty(), "Mask::", fn, ": shape must have at least 1 dim, got ", shape);
  for (int64_t s : shape) {
    TORCH_CHECK(s >= 0, "Mask::", fn, ": shape sizes must be >= 0, got ", shape);
  }
}

void check_dtype(const char* fn, torch::Dtype dtype) {
  TORCH_CHECK(torch::isFloatingType(dtype), "Mask::", fn, ": dtype must be a floating type, got ",
              dtype);
}

void check_integral(const char* fn, const char* name, const torch::Tensor& t) {
  TORCH_CHECK(t.defined(), "Mask::", fn, ": ", name, " must be defined");
  TORCH_CHECK(torch::isIntegralType(t.scalar_type(), /*includeBool=*/false), "Mask::", fn, ": ",
              name, " must be an integer tensor, got ", t.scalar_type());
}

// Sorted unique positions and their weights, a duplicated position keeping its last entry.
std::pair<torch::Tensor, torch::Tensor> last_wins(const torch::Tensor& indices,
                                                  const torch::Tensor& data) {
  if (indices.numel() == 0) return {indices, data};
  auto [sorted, perm] = indices.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  // A stable sort keeps equal positions in their given order: the last of each run wins.
  auto keep = torch::ones_like(sorted, sorted.options().dtype(torch::kBool));
  if (sorted.numel() > 1) {
    keep.index_put_({Slice(0, -1)}, sorted.index({Slice(1, torch::indexing::None)})
                                        .ne(sorted.index({Slice(0, -1)})));
  }
  return {sorted.index({keep}), data.index({perm}).index({keep})};
}

// Each row's CSR entries as a padded [rows, K] list, K the longest row; padding has column
// `pad` and weight 0. O(entries + rows * K).
std::pair<torch::Tensor, torch::Tensor> padded_rows(const MaskIndex& idx,
                                                    int64_t rows,
                                                    int64_t n,
                                                    int64_t pad,
                                                    torch::Dtype dtype) {
  auto counts = idx.ptr.diff();
  const int64_t K = idx.indices.numel() > 0 ? counts.max().item<int64_t>() : 0;
  auto cols = torch::full({rows, K}, pad, idx.indices.options().dtype(torch::kLong));
  auto data = torch::zeros({rows, K}, idx.indices.options().dtype(dtype));
  if (K > 0) {
    auto row_of = torch::repeat_interleave(torch::arange(rows, idx.ptr.options()), counts);
    auto flat = row_of * K + torch::arange(idx.indices.numel(), idx.ptr.options()) -
                idx.ptr.index({row_of});
    cols.view(-1).index_put_({flat}, idx.indices.remainder(n));
    data.view(-1).index_put_({flat}, idx.data.to(dtype));
  }
  return {cols, data};
}

// The union of two CSR masks, row by row: within each mask a repeated column keeps its last
// entry (as `dense` reads it), then the two weights of a column are added and capped at 1.
// One stable sort per row of (column, source) keys, so the cost is a batched sort of short
// rows, never a sort of every entry of the mask.
MaskIndex merge_rows(const MaskIndex& a, const MaskIndex& b, int64_t rows, int64_t n,
                     torch::Dtype dtype) {
  // Padding column n sorts after every real column.
  auto [ca, da] = padded_rows(a, rows, n, n, dtype);
  auto [cb, db] = padded_rows(b, rows, n, n, dtype);
  if (ca.size(1) + cb.size(1) == 0) {
    return {a.indices.narrow(0, 0, 0), torch::zeros({rows + 1}, a.ptr.options()),
            torch::empty({0}, a.indices.options().dtype(dtype))};
  }
  // Key 2 * column + source: a's entries of a column sort before b's, each in given order.
  auto key = torch::cat({ca * 2, cb * 2 + 1}, 1);
  auto [skey, perm] = key.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
  auto w = torch::cat({da, db}, 1).gather(1, perm);
  auto col = skey.div(2, "floor");
  auto last = torch::full({rows, 1}, -1, skey.options());
  auto next_key = torch::cat({skey.narrow(1, 1, skey.size(1) - 1), last}, 1);
  auto next_col = torch::cat({col.narrow(1, 1, col.size(1) - 1), last}, 1);
  // The last entry of each (column, source) run counts. A column ends at its last entry, which
  // is its last b entry if b has it; a's counted entry (the most recent one before) is added.
  auto col_end = col.ne(next_col);
  auto from_b = skey.remainder(2).eq(1);
  auto counted_a = skey.ne(next_key) & from_b.logical_not();
  auto at = torch::arange(skey.size(1), skey.options()).expand_as(skey);
  auto recent_a = std::get<0>(torch::where(counted_a, at, torch::full_like(at, -1)).cummax(1));
  auto safe = recent_a.clamp_min(0);
  auto add_a = from_b & recent_a.ge(0) & col.gather(1, safe).eq(col);
  auto total = w + torch::where(add_a, w.gather(1, safe), torch::zeros_like(w));
  auto keep = col_end & col.lt(n);
  auto flat = col + torch::arange(rows, col.options()).mul(n).unsqueeze(1);
  auto ptr = torch::cat({torch::zeros({1}, a.ptr.options()), keep.sum(1).cumsum(0)});
  return {flat.masked_select(keep), ptr, total.masked_select(keep).clamp(0, 1)};
}

}  // namespace

Mask::Mask(std::vector<int64_t> shape, torch::Dtype dtype, torch::Device device, Form form)
    : shape_(std::move(shape)), dtype_(dtype), device_(device), form_(form) {}

int64_t Mask::numel() const { return prod(shape_); }

int64_t Mask::rows() const { return prod(torch::IntArrayRef(shape_).slice(0, shape_.size() - 1)); }

void Mask::check_same_shape(const char* fn, const torch::Tensor& x) const {
  TORCH_CHECK(x.defined(), "Mask::", fn, ": x must be defined");
  TORCH_CHECK(x.sizes() == torch::IntArrayRef(shape_), "Mask::", fn, ": x must have shape ",
              torch::IntArrayRef(shape_), ", got ", x.sizes());
}

Mask Mask::empty(torch::IntArrayRef shape, torch::Dtype dtype, torch::Device device) {
  check_shape("empty", shape);
  check_dtype("empty", dtype);
  return Mask(shape.vec(), dtype, device, Form::kEmpty);
}

Mask Mask::full(torch::IntArrayRef shape, torch::Dtype dtype, torch::Device device) {
  check_shape("full", shape);
  check_dtype("full", dtype);
  return Mask(shape.vec(), dtype, device, Form::kFull);
}

Mask Mask::from_dense(torch::IntArrayRef shape, const torch::Tensor& dense, torch::Dtype dtype) {
  check_shape("from_dense", shape);
  check_dtype("from_dense", dtype);
  TORCH_CHECK(dense.defined(), "Mask::from_dense: dense must be defined");
  TORCH_CHECK(dense.sizes() == shape, "Mask::from_dense: dense must have shape ", shape, ", got ",
              dense.sizes());
  Mask m(shape.vec(), dtype, dense.device(), Form::kDense);
  m.dense_ = dense.to(dtype);
  return m;
}

Mask Mask::from_indices(torch::IntArrayRef shape,
                        const torch::Tensor& indices,
                        const torch::Tensor& ptr,
                        const torch::Tensor& data,
                        torch::Dtype dtype) {
  check_shape("from_indices", shape);
  check_dtype("from_indices", dtype);
  check_integral("from_indices", "indices", indices);
  check_integral("from_indices", "ptr", ptr);
  const int64_t n = shape.back(), total = prod(shape);
  const int64_t rows = prod(shape.slice(0, shape.size() - 1));
  TORCH_CHECK(indices.dim() == 1, "Mask::from_indices: indices must be 1-D, got shape ",
              indices.sizes());
  TORCH_CHECK(ptr.dim() == 1, "Mask::from_indices: ptr must be 1-D, got shape ", ptr.sizes());
  const int64_t E = indices.numel();
  TORCH_CHECK(ptr.numel() == rows + 1, "Mask::from_indices: ptr must have rows + 1 = ", rows + 1,
              " entries for shape ", shape, ", got ", ptr.numel());
  if (data.defined()) {
    TORCH_CHECK(data.dim() == 1 && data.numel() == E,
                "Mask::from_indices: data must have shape [", E, "] like indices, got ",
                data.sizes());
  }
  const auto device = indices.device();
  auto idx = indices.to(torch::kLong);
  auto p = ptr.to(device, torch::kLong);
  if (E > 0) {
    const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < total, "Mask::from_indices: indices must lie in [0, ", total,
                ") for shape ", shape, ", got values in [", lo, ", ", hi, "]");
  }
  const int64_t first = p[0].item<int64_t>(), last = p[rows].item<int64_t>();
  TORCH_CHECK(first == 0, "Mask::from_indices: ptr[0] must be 0, got ", first);
  TORCH_CHECK(last == E, "Mask::from_indices: ptr[-1] must equal indices.numel() = ", E, ", got ",
              last);
  auto counts = p.diff();
  auto decrease = counts.lt(0);
  if (decrease.any().item<bool>()) {
    const int64_t r = decrease.nonzero().min().item<int64_t>();
    TORCH_CHECK(false, "Mask::from_indices: ptr must be nondecreasing, got ptr[", r,
                "] = ", p[r].item<int64_t>(), " > ptr[", r + 1, "] = ", p[r + 1].item<int64_t>());
  }
  if (E > 0) {
    // Every entry must lie in the row ptr assigns it to (merge and index() rely on it).
    auto row_of = torch::repeat_interleave(torch::arange(rows, p.options()), counts);
    auto wrong = idx.div(n, "floor").ne(row_of);
    if (wrong.any().item<bool>()) {
      const int64_t e = wrong.nonzero().min().item<int64_t>();
      TORCH_CHECK(false, "Mask::from_indices: entry ", e, " (flat index ",
                  idx[e].item<int64_t>(), ") lies in row ", idx[e].item<int64_t>() / n,
                  " but ptr places it in row ", row_of[e].item<int64_t>());
    }
  }
  Mask m(shape.vec(), dtype, device, Form::kIndex);
  m.index_.indices = idx;
  m.index_.ptr = p;
  m.index_.data = data.defined() ? data.to(device, dtype)
                                 : torch::ones({E}, torch::TensorOptions(dtype).device(device));
  return m;
}

Mask Mask::from_row_wise(torch::IntArrayRef shape,
                         const torch::Tensor& row_idx,
                         const torch::Tensor& data,
                         torch::Dtype dtype,
                         bool use_padding,
                         bool sparse) {
  check_shape("from_row_wise", shape);
  check_dtype("from_row_wise", dtype);
  check_integral("from_row_wise", "row_idx", row_idx);
  const auto lead = shape.slice(0, shape.size() - 1);
  TORCH_CHECK(row_idx.dim() == static_cast<int64_t>(shape.size()) &&
                  row_idx.sizes().slice(0, lead.size()) == lead,
              "Mask::from_row_wise: row_idx must have shape ", lead, " + [k] for mask shape ",
              shape, ", got ", row_idx.sizes());
  const int64_t k = row_idx.size(-1);
  TORCH_CHECK(k >= 1, "Mask::from_row_wise: row_idx must list k >= 1 columns per row, got k = ",
              k);
  if (data.defined()) {
    TORCH_CHECK(data.sizes() == row_idx.sizes(), "Mask::from_row_wise: data must have shape ",
                row_idx.sizes(), " like row_idx, got ", data.sizes());
  }
  const int64_t n = shape.back(), rows = prod(lead);
  const auto device = row_idx.device();
  auto idx = row_idx.to(torch::kLong).reshape({rows, k});
  if (idx.numel() > 0) {
    const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
    TORCH_CHECK(hi < n, "Mask::from_row_wise: row_idx entries must be < n = ", n, ", got ", hi);
    TORCH_CHECK(lo >= -1, "Mask::from_row_wise: row_idx entries must be >= -1 (padding), got ",
                lo);
    TORCH_CHECK(lo >= 0 || use_padding,
                "Mask::from_row_wise: row_idx contains -1 padding entries but use_padding is "
                "false");
  }
  auto vals = data.defined() ? data.to(device, dtype).reshape({rows, k})
                             : torch::ones({rows, k}, torch::TensorOptions(dtype).device(device));
  auto flat = idx + torch::arange(rows, idx.options()).mul(n).unsqueeze(1);  // [rows, k]
  auto valid = idx.ge(0);
  // Boolean selection keeps row-major order: each row's list as given, padding dropped.
  auto ptr = torch::zeros({rows + 1}, idx.options());
  ptr.index_put_({Slice(1, torch::indexing::None)}, valid.sum(1).cumsum(0));
  Mask m(shape.vec(), dtype, device, Form::kIndex);
  m.index_.indices = flat.index({valid});
  m.index_.ptr = ptr;
  m.index_.data = vals.index({valid});
  if (sparse) return m;
  Mask d(shape.vec(), dtype, device, Form::kDense);
  d.dense_ = m.dense();  // duplicates collapse there, the last entry of a row's list winning
  return d;
}

torch::Tensor Mask::dense() const {
  const auto opts = torch::TensorOptions(dtype_).device(device_);
  switch (form_) {
    case Form::kFull:
      return torch::ones(shape_, opts);
    case Form::kEmpty:
      return torch::zeros(shape_, opts);
    case Form::kDense:
      return dense_;
    case Form::kIndex:
      break;
  }
  auto [pos, w] = last_wins(index_.indices, index_.data);
  auto out = torch::zeros({numel()}, opts);
  out.index_put_({pos}, w);
  return out.view(shape_);
}

MaskIndex Mask::index() const {
  const auto lopts = torch::TensorOptions(torch::kLong).device(device_);
  const auto opts = torch::TensorOptions(dtype_).device(device_);
  const int64_t n = shape_.back(), r = rows();
  switch (form_) {
    case Form::kFull:
      return {torch::arange(numel(), lopts), torch::arange(r + 1, lopts).mul(n),
              torch::ones({numel()}, opts)};
    case Form::kEmpty:
      return {torch::empty({0}, lopts), torch::zeros({r + 1}, lopts), torch::empty({0}, opts)};
    case Form::kIndex:
      return index_;
    case Form::kDense:
      break;
  }
  auto flat = dense_.reshape({-1});
  auto pos = flat.gt(0).nonzero().squeeze(1);  // row-major order
  auto ptr = torch::zeros({r + 1}, lopts);
  if (r > 0) {
    ptr.index_put_({Slice(1, torch::indexing::None)},
                   dense_.reshape({r, n}).gt(0).sum(1).cumsum(0));
  }
  return {pos, ptr, flat.index({pos})};
}

double Mask::density() const {
  switch (form_) {
    case Form::kFull:
      return 1.0;
    case Form::kEmpty:
      return 0.0;
    case Form::kDense:
    case Form::kIndex:
      break;
  }
  const int64_t total = numel();
  if (total == 0) return 0.0;
  const double active = form_ == Form::kDense ? dense_.gt(0).sum().item<double>()
                                              : static_cast<double>(index_.indices.numel());
  return active / static_cast<double>(total);
}

torch::Tensor Mask::apply(const torch::Tensor& x) const {
  check_same_shape("apply", x);
  if (is_full() || is_empty()) return x;
  return x.mul(dense()).to(x.scalar_type());
}

torch::Tensor Mask::apply_inverse(const torch::Tensor& x) const {
  check_same_shape("apply_inverse", x);
  if (is_full() || is_empty()) return x;
  auto m = dense();
  auto scaled = x.mul(m.add(1e-6).reciprocal());
  return torch::where(m.ne(0), scaled, torch::zeros_like(scaled)).to(x.scalar_type());
}

torch::Tensor Mask::row_sum_inverse(const torch::Tensor& x) const {
  check_same_shape("row_sum_inverse", x);
  return apply_inverse(x).sum(-1, /*keepdim=*/true);
}

Mask Mask::merge(const Mask& other) const {
  TORCH_CHECK(other.shape_ == shape_, "Mask::merge: other must have shape ",
              torch::IntArrayRef(shape_), ", got ", torch::IntArrayRef(other.shape_));
  if (is_full() || other.is_full()) return Mask(shape_, dtype_, device_, Form::kFull);
  if (is_empty() && other.is_empty()) return Mask(shape_, dtype_, device_, Form::kEmpty);
  auto retyped = [this](const Mask& m) {
    Mask out = m;
    out.dtype_ = dtype_;
    if (out.dense_.defined()) out.dense_ = out.dense_.to(dtype_);
    if (out.index_.data.defined()) out.index_.data = out.index_.data.to(dtype_);
    return out;
  };
  if (is_empty()) return retyped(other);
  if (other.is_empty()) return *this;
  TORCH_CHECK(other.device_ == device_, "Mask::merge: other must be on device ", device_,
              ", got ", other.device_);
  if (is_index() && other.is_index()) {
    Mask m(shape_, dtype_, device_, Form::kIndex);
    m.index_ = merge_rows(index_, other.index_, rows(), shape_.back(), dtype_);
    m.rows_unique_ = true;
    return m;
  }
  Mask m(shape_, dtype_, device_, Form::kDense);
  m.dense_ = dense().add(other.dense().to(dtype_)).clamp(0, 1);
  return m;
}

RowLists row_lists(const Mask& mask) {
  const auto& shape = mask.shape();
  std::vector<int64_t> lead(shape.begin(), shape.end() - 1);
  const int64_t n = shape.back();
  auto opts = torch::TensorOptions().device(mask.device());
  auto with_k = [&](int64_t k) {
    std::vector<int64_t> s = lead;
    s.push_back(k);
    return s;
  };
  if (mask.is_empty()) {
    return {torch::empty(with_k(0), opts.dtype(torch::kLong)),
            torch::empty(with_k(0), opts.dtype(mask.dtype()))};
  }
  if (mask.is_full()) {
    return {torch::arange(n, opts.dtype(torch::kLong)).expand(with_k(n)).contiguous(),
            torch::ones(with_k(n), opts.dtype(mask.dtype()))};
  }
  auto [cols, data] = padded_rows(without_duplicates(mask).index(), prod(lead), n, -1,
                                  mask.dtype());
  return {cols.view(with_k(cols.size(1))), data.view(with_k(cols.size(1)))};
}

Mask without_duplicates(const Mask& mask) {
  if (mask.rows_unique()) return mask;
  // Merging with an INDEX mask of no entries reduces each row's repeated columns to their last
  // entry and sorts the rows (see Mask::merge); adding nothing keeps the weights.
  auto opts = torch::TensorOptions().device(mask.device()).dtype(torch::kLong);
  const torch::IntArrayRef shape = mask.shape();
  const int64_t rows = prod(shape.slice(0, shape.size() - 1));
  Mask none = Mask::from_indices(shape, torch::empty({0}, opts), torch::zeros({rows + 1}, opts),
                                 {}, mask.dtype());
  return none.merge(mask);
}

}  // namespace sparse
}  // namespace attnkit
