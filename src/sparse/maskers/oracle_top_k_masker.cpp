#include <attnkit/sparse/fixed_maskers.h>

#include <torch/torch.h>

#include <algorithm>
#include <limits>

namespace attnkit {
namespace sparse {

namespace {

// Queries scored at once: about 4M scores per block (16 MB in float32).
constexpr int64_t kScoresPerBlock = int64_t{1} << 22;

}  // namespace

OracleTopKMasker::OracleTopKMasker(OracleTopKMaskerOptions options) : options_(options) {
  TORCH_CHECK(options_.heavy_size().value() > 0, "OracleTopKMasker: heavy_size must be > 0, got ",
              options_.heavy_size().str());
}

MaskerPtr OracleTopKMasker::from_config(const MaskerConfig& config) {
  return std::make_shared<OracleTopKMasker>(OracleTopKMaskerOptions(config.size("heavy_size")));
}

Mask OracleTopKMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const int64_t k = options_.heavy_size().resolve(in.k_len);
  const auto shape = in.mask_shape();
  if (in.k_len <= k) return Mask::full(shape, previous.dtype(), in.queries.device());
  if (k <= 0) return previous;
  const auto compute = in.queries.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const double lowest = compute == torch::kDouble ? std::numeric_limits<double>::lowest()
                                                  : std::numeric_limits<float>::lowest();
  RowLists lists;
  if (previous.is_index()) lists = row_lists(previous);
  const int64_t G = in.heads / in.kv_heads;
  auto keys_t = in.keys.to(compute).transpose(-2, -1);  // [B, Hkv, D, Tk]
  const int64_t block =
      std::max<int64_t>(1, kScoresPerBlock / std::max<int64_t>(1, in.batch * in.heads * in.k_len));
  std::vector<torch::Tensor> picks;
  for (int64_t q0 = 0; q0 < in.q_len; q0 += block) {
    const int64_t c = std::min(block, in.q_len - q0);
    // Unscaled q.k, grouped so the keys are not repeated per head.
    auto q = in.queries.narrow(2, q0, c).to(compute).reshape(
        {in.batch, in.kv_heads, G * c, in.queries.size(3)});
    auto s = torch::matmul(q, keys_t).view({in.batch, in.heads, c, in.k_len});
    if (in.attention_mask.defined()) s = s + in.attention_mask.narrow(2, q0, c).to(compute);
    if (previous.is_dense()) {
      s = s.masked_fill(previous.dense().narrow(2, q0, c).gt(0), lowest);
    } else if (previous.is_index()) {
      s = fill_active(s, RowLists{lists.cols.narrow(2, q0, c), lists.data.narrow(2, q0, c)},
                      lowest);
    }
    picks.push_back(std::get<1>(s.topk(k, -1)));
  }
  Mask heavy = mask_from_columns(shape, torch::cat(picks, 2), previous.dtype());
  return previous.is_empty() ? heavy : previous.merge(heavy);
}

}  // namespace sparse
}  // namespace attnkit
