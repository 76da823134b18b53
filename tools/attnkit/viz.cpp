#include "viz.h"

#include <attnkit/attnkit.h>

#include <png.h>

#include <algorithm>
#include <cstring>
#include <iomanip>
#include <memory>
#include <stdexcept>

namespace attnkit::cli {

namespace {

/// Smallest image side the cells are scaled up to.
constexpr int64_t kMinImageSide = 256;
/// Grey of a visible key with (next to) no weight, so it stays apart from an invisible one.
constexpr double kMinDarkness = 0.2;
constexpr uint8_t kGridGrey = 160;

/// [B, H, T, Tk] weights (and an optional bool selection that broadcasts after reduction to
/// [T, Tk]) -> the map.
AttentionMap reduce(const torch::Tensor& weights, const torch::Tensor& selected) {
  TORCH_CHECK(weights.dim() == 4, "expected attention weights [B, H, T, Tk], got ",
              weights.sizes());
  const torch::Tensor w = weights.detach().to(torch::kFloat64);
  AttentionMap map;
  map.weight = w.mean(std::vector<int64_t>{0, 1}).abs();
  map.visible = (w != 0).any(0).any(0);
  if (selected.defined()) map.visible = map.visible | selected;
  return map;
}

}  // namespace

AttentionMap attention_map(const Mechanism& mechanism, const VizOptions& options) {
  if (mechanism.set_to_set()) {
    throw std::invalid_argument(mechanism.name + " (" + mechanism.class_name +
                                ") is set-to-set, not sequence-to-sequence: viz draws only "
                                "sequence mechanisms");
  }
  TORCH_CHECK(options.batch_size > 0 && options.seq_len > 0,
              "viz: batch and seq must be positive, got ", options.batch_size, ", ",
              options.seq_len);
  if (options.seq_len > kMaxVizSeq) {
    throw std::invalid_argument("viz: --seq " + std::to_string(options.seq_len) +
                                " is too large (at most " + std::to_string(kMaxVizSeq) + ")");
  }
  torch::manual_seed(options.seed);
  MechanismConfig config = options.config;
  config.seq_len = options.seq_len;
  Attention attn = mechanism.build_sequence(config);
  attn->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({options.batch_size, options.seq_len, config.dim});

  // The sparse mechanisms also say which keys they selected: a selected key with a weight that
  // underflowed to 0 still counts as seen.
  const std::shared_ptr<AttentionImpl> impl = attn.ptr();
  if (auto dsa = std::dynamic_pointer_cast<DeepSeekSparseAttentionImpl>(impl)) {
    const DeepSeekSparseOutput out = dsa->forward_with_aux_sparse(x);
    return reduce(out.attn_weights, out.selected.any(0));  // [B, T, Tk]
  }
  if (auto msa = std::dynamic_pointer_cast<MiniMaxSparseAttentionImpl>(impl)) {
    const MiniMaxSparseOutput out = msa->forward_with_aux_sparse(x);
    return reduce(out.attn_weights, out.keep.any(0).any(0));  // [B, Gk, T, Tk]
  }
  if (auto csa = std::dynamic_pointer_cast<CompressedSparseAttentionImpl>(impl)) {
    // Keys: [compressed entries (nb) ; raw tokens (T)]; selected covers the entries only.
    const CompressedSparseOutput out = csa->forward_with_aux_sparse(x);
    const torch::Tensor entries = out.selected.any(0);  // [T, nb]
    const int64_t raw = out.attn_weights.size(-1) - entries.size(-1);
    return reduce(out.attn_weights,
                  torch::cat({entries, torch::zeros({entries.size(0), raw}, entries.options())},
                             /*dim=*/1));
  }
  const AttentionOutput out = attn->forward_with_aux(x);
  if (!out.attn_weights.defined()) {
    throw std::invalid_argument(mechanism.name + " (" + mechanism.class_name +
                                "): forward_with_aux returns no attention weights to draw");
  }
  return reduce(out.attn_weights, torch::Tensor());
}

std::vector<uint8_t> render(const AttentionMap& map,
                            int64_t cell,
                            bool binary,
                            bool grid,
                            int64_t& width,
                            int64_t& height) {
  const int64_t rows = map.weight.size(0), cols = map.weight.size(1);
  const int64_t line = grid ? 1 : 0;
  // With a grid, cell c starts at c * cell and its first row and column are the grid line.
  width = cols * cell + line;
  height = rows * cell + line;
  std::vector<uint8_t> pixels(static_cast<size_t>(width * height), 255);

  const torch::Tensor weight = map.weight.contiguous();
  const torch::Tensor visible = map.visible.contiguous();
  const double* w = weight.data_ptr<double>();
  const bool* v = visible.data_ptr<bool>();
  for (int64_t r = 0; r < rows; ++r) {
    // Grey levels are relative to the heaviest visible key of the row.
    double row_max = 0;
    for (int64_t c = 0; c < cols; ++c) {
      if (v[r * cols + c]) row_max = std::max(row_max, w[r * cols + c]);
    }
    for (int64_t c = 0; c < cols; ++c) {
      if (!v[r * cols + c]) continue;
      double darkness = 1.0;
      if (!binary) {
        const double share = row_max > 0 ? w[r * cols + c] / row_max : 0.0;
        darkness = kMinDarkness + (1.0 - kMinDarkness) * std::clamp(share, 0.0, 1.0);
      }
      const auto grey = static_cast<uint8_t>(std::lround(255.0 * (1.0 - darkness)));
      for (int64_t y = r * cell; y < (r + 1) * cell; ++y) {
        std::fill_n(pixels.begin() + y * width + c * cell, cell, grey);
      }
    }
  }
  if (grid) {
    for (int64_t y = 0; y < height; y += cell) {
      std::fill_n(pixels.begin() + y * width, width, kGridGrey);
    }
    for (int64_t y = 0; y < height; ++y) {
      for (int64_t x = 0; x < width; x += cell) pixels[y * width + x] = kGridGrey;
    }
  }
  return pixels;
}

void write_png(const std::string& path,
               int64_t width,
               int64_t height,
               const std::vector<uint8_t>& pixels,
               bool rgb) {
  // libpng's simplified API: no setjmp, errors come back in image.message.
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = rgb ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  if (!png_image_write_to_file(&image, path.c_str(), /*convert_to_8bit=*/0, pixels.data(),
                               /*row_stride=*/0, /*colormap=*/nullptr)) {
    const std::string message = image.message;
    png_image_free(&image);
    throw std::runtime_error("cannot write " + path + ": " + message);
  }
}

int run_viz(const std::string& name, const VizOptions& options, std::ostream& out) {
  const Mechanism& mechanism = find_mechanism(name);
  if (options.out.empty()) throw std::invalid_argument("viz: --out FILE.png is required");
  const AttentionMap map = attention_map(mechanism, options);
  const int64_t rows = map.weight.size(0), cols = map.weight.size(1);
  const int64_t cell =
      std::max<int64_t>(1, (kMinImageSide + std::max(rows, cols) - 1) / std::max(rows, cols));
  const bool grid = options.grid && cell >= 4;
  int64_t width = 0, height = 0;
  const std::vector<uint8_t> pixels = render(map, cell, options.binary, grid, width, height);
  write_png(options.out, width, height, pixels);

  const double density = map.visible.to(torch::kFloat64).mean().item<double>();
  out << "wrote " << options.out << ": " << width << " x " << height << " px, " << rows
      << " queries x " << cols << " keys, " << cell << " px per cell, " << std::fixed
      << std::setprecision(1) << 100.0 * density << "% of the query-key pairs visible\n";
  return 0;
}

}  // namespace attnkit::cli
