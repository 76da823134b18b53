#include <attnkit/sparse/learned_maskers.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace attnkit {
namespace sparse {

namespace {

using json = nlohmann::json;

// The channel file: an object of lists of integer lists (upstream's
// load_sorted_channels_from_file checks).
std::map<std::string, std::vector<std::vector<int64_t>>> read_channel_file(
    const std::string& path) {
  std::error_code ec;
  TORCH_CHECK(std::filesystem::is_regular_file(path, ec),
              "DoubleSparsityTopKMasker: sorted_channel_file does not exist: '", path, "'");
  std::ifstream file(path);
  TORCH_CHECK(file.good(), "DoubleSparsityTopKMasker: cannot read sorted_channel_file '", path,
              "'");
  json data;
  try {
    data = json::parse(file);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "DoubleSparsityTopKMasker: invalid JSON in sorted_channel_file '", path,
                "': ", e.what());
  }
  TORCH_CHECK(data.is_object(), "DoubleSparsityTopKMasker: sorted_channel_file '", path,
              "' must contain a JSON object, got ", data.type_name());
  std::map<std::string, std::vector<std::vector<int64_t>>> out;
  for (const auto& [key, value] : data.items()) {
    TORCH_CHECK(value.is_array(), "DoubleSparsityTopKMasker: '", path, "': channel data for ",
                key, " must be a list, got ", value.type_name());
    auto& heads = out[key];
    for (size_t i = 0; i < value.size(); ++i) {
      const json& list = value[i];
      TORCH_CHECK(list.is_array(), "DoubleSparsityTopKMasker: '", path, "': channel data for ",
                  key, "[", i, "] must be a list, got ", list.type_name());
      std::vector<int64_t> channels;
      for (const json& c : list) {
        TORCH_CHECK(c.is_number_integer(), "DoubleSparsityTopKMasker: '", path,
                    "': channel indices for ", key, "[", i, "] must be integers, got ", c.dump());
        channels.push_back(c.get<int64_t>());
      }
      heads.push_back(std::move(channels));
    }
  }
  return out;
}

}  // namespace

DoubleSparsityTopKMasker::DoubleSparsityTopKMasker(DoubleSparsityTopKMaskerOptions options)
    : options_(std::move(options)) {
  const auto& o = options_;
  TORCH_CHECK(o.heavy_size().value() > 0, "DoubleSparsityTopKMasker: heavy_size must be > 0, got ",
              o.heavy_size().str());
  TORCH_CHECK(o.group_factor() > 0, "DoubleSparsityTopKMasker: group_factor must be > 0, got ",
              o.group_factor());
  TORCH_CHECK(o.label_bits() > 0 && o.label_bits() <= 16,
              "DoubleSparsityTopKMasker: label_bits must be in range (0, 16], got ",
              o.label_bits());
  sorted_channels_ = read_channel_file(o.sorted_channel_file());
}

MaskerPtr DoubleSparsityTopKMasker::from_config(const MaskerConfig& config) {
  DoubleSparsityTopKMaskerOptions options(config.size("heavy_size"),
                                          config.string("sorted_channel_file"));
  options.group_factor(config.integer("group_factor", 16))
      .label_bits(config.integer("label_bits", 4))
      .channel_selection(config.string("channel_selection", "qk_proj"));
  return std::make_shared<DoubleSparsityTopKMasker>(std::move(options));
}

torch::Tensor DoubleSparsityTopKMasker::channels(int64_t layer,
                                                 int64_t heads,
                                                 int64_t head_dim,
                                                 torch::Device device) const {
  const int64_t r = head_dim / options_.group_factor();
  TORCH_CHECK(r >= 1, "DoubleSparsityTopKMasker: head_dim // group_factor must be >= 1, got ",
              head_dim, " // ", options_.group_factor(), " = 0");
  const std::string key =
      "model.layers." + std::to_string(layer) + ".self_attn." + options_.channel_selection();
  auto it = sorted_channels_.find(key);
  TORCH_CHECK(it != sorted_channels_.end(), "DoubleSparsityTopKMasker: no sorted channels for ",
              key, " in '", options_.sorted_channel_file(), "'");
  const auto& lists = it->second;
  TORCH_CHECK(static_cast<int64_t>(lists.size()) == heads, "DoubleSparsityTopKMasker: ", key,
              " expected one channel list per query head (", heads, "), got ", lists.size());
  std::vector<int64_t> flat;
  for (size_t h = 0; h < lists.size(); ++h) {
    TORCH_CHECK(static_cast<int64_t>(lists[h].size()) >= r, "DoubleSparsityTopKMasker: ", key,
                "[", h, "] expected at least head_dim // group_factor = ", r, " channels, got ",
                lists[h].size());
    for (int64_t j = 0; j < r; ++j) {
      const int64_t c = lists[h][j];
      TORCH_CHECK(c >= 0 && c < head_dim, "DoubleSparsityTopKMasker: ", key, "[", h,
                  "] channel expected in [0, ", head_dim, "), got ", c);
      flat.push_back(c);
    }
  }
  return torch::tensor(flat, torch::kLong).view({heads, r}).to(device);
}

Mask DoubleSparsityTopKMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const int64_t layer = in.layer("double_sparsity_top_k");
  const int64_t k = options_.heavy_size().resolve(in.k_len);
  const auto shape = in.mask_shape();
  if (in.k_len - in.q_len <= k) return Mask::full(shape, previous.dtype(), in.queries.device());
  if (k <= 0) return previous;
  const int64_t D = in.queries.size(3);
  auto idx = channels(layer, in.heads, D, in.queries.device());  // [H, r]
  const int64_t r = idx.size(1);
  const auto dtype = in.queries.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  // The outlier channels of each head, for the queries and the keys repeated to H heads.
  auto pick = [&](const torch::Tensor& x) {
    auto index = idx.view({1, in.heads, 1, r}).expand({x.size(0), in.heads, x.size(2), r});
    auto g = x.to(dtype).gather(-1, index);
    return options_.label_bits() < 16 ? pseudo_quantize(g, options_.label_bits()) : g;
  };
  auto q = pick(in.queries);                                   // [B, H, Tq, r]
  auto keys_t = pick(in.keys_per_head()).transpose(-2, -1);    // [B, H, r, Tk]
  const double norm = std::sqrt(static_cast<double>(r));
  auto heavy_idx = top_k_inactive(in, previous, k, [&](int64_t q0, int64_t c) {
    auto s = torch::matmul(q.narrow(2, q0, c), keys_t) / norm;
    if (in.attention_mask.defined()) s = s + in.attention_mask.narrow(2, q0, c).to(s.dtype());
    return s;
  });
  Mask heavy = mask_from_columns(shape, heavy_idx, previous.dtype());
  return previous.is_empty() ? heavy : previous.merge(heavy);
}

}  // namespace sparse
}  // namespace attnkit
