#include "sparse_eval.h"
#include "viz.h"

#include <attnkit/sparse/research_attention.h>

#include <torch/serialize.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>

namespace attnkit::cli {

const std::vector<std::string> kDefaultSparseConfigs = {
    R"([{"type": "sink", "sink_size": 128}, {"type": "local", "window_size": 128}, )"
    R"({"type": "oracle_top_k", "heavy_size": 0.1}])",
    R"([{"type": "sink", "sink_size": 128}, {"type": "local", "window_size": 128}, )"
    R"({"type": "random_sampling", "sampling_rate": 0.1}])",
};

namespace {

using Clock = std::chrono::steady_clock;

/// The default key lengths on random data.
const std::vector<int64_t> kDefaultLengths = {1024, 4096, 16384};

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string fixed(double value, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << value;
  return s.str();
}

std::string scientific(double value, int digits) {
  std::ostringstream s;
  s << std::scientific << std::setprecision(digits) << value;
  return s.str();
}

std::string shape_text(torch::IntArrayRef shape) {
  std::ostringstream s;
  s << shape;
  return s.str();
}

/// The text with every run of white space turned into one space, trimmed: a config file's JSON
/// on one line.
std::string one_line(const std::string& text) {
  std::string line;
  bool space = false;
  for (char c : text) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
      space = true;
      continue;
    }
    if (space && !line.empty()) line += ' ';
    space = false;
    line += c;
  }
  return line;
}

/// Rows as columns padded to their widest cell, a rule under the header row, every column
/// right-aligned (as commands.cpp's tables).
void print_table(std::ostream& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    std::string line;
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const std::string& cell = rows[r][c];
      line += (c == 0 ? "" : "  ") + std::string(width[c] - cell.size(), ' ') + cell;
    }
    out << line << "\n";
    if (r == 0) {
      size_t total = 0;
      for (size_t w : width) total += w + 2;
      out << std::string(total - 2, '-') << "\n";
    }
  }
}

/// The median wall time of fn in ms; `before` runs untimed ahead of every call.
template <typename Before, typename Fn>
double median_ms(int repeats, Before&& before, Fn&& fn) {
  std::vector<double> times;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    before();
    const auto start = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  return n % 2 == 1 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
}

/// ||a - b||_F / ||b||_F in float64 (0 when both are zero, infinity when only b is).
double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor reference = b.to(torch::kFloat64);
  const double diff = (a.to(torch::kFloat64) - reference).norm().item<double>();
  const double norm = reference.norm().item<double>();
  if (norm > 0.0) return diff / norm;
  return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
}

torch::Tensor qkv_tensor(const c10::Dict<torch::IValue, torch::IValue>& dict,
                         const std::string& key,
                         const std::string& path) {
  const auto it = dict.find(torch::IValue(key));
  if (it == dict.end()) {
    throw std::invalid_argument("sparse-eval: --qkv '" + path + "' has no tensor \"" + key +
                                "\" (expected a dict {\"q\", \"k\", \"v\"})");
  }
  if (!it->value().isTensor()) {
    throw std::invalid_argument("sparse-eval: --qkv '" + path + "': \"" + key +
                                "\" is not a tensor");
  }
  const torch::Tensor t = it->value().toTensor().detach();
  if (t.dim() != 4 || !t.is_floating_point()) {
    throw std::invalid_argument("sparse-eval: --qkv '" + path + "': \"" + key +
                                "\" must be a 4-D floating tensor, got " + shape_text(t.sizes()) +
                                " " + std::string(c10::toString(t.scalar_type())));
  }
  // float64 stays float64; float16 / bfloat16 are evaluated in float32.
  const auto dtype = t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  return t.to(torch::kCPU, dtype).contiguous();
}

// ---- the plot ---------------------------------------------------------------------------------

constexpr std::array<PlotColour, 8> kPalette = {{
    {"red", 220, 40, 40},
    {"blue", 40, 90, 220},
    {"green", 30, 150, 50},
    {"orange", 240, 140, 0},
    {"purple", 140, 60, 190},
    {"cyan", 0, 170, 190},
    {"magenta", 220, 50, 170},
    {"brown", 140, 90, 40},
}};

/// A 3 x 5 pixel font for tick labels: each glyph is 5 rows of 3 bits (most significant bit on the
/// left).
struct Glyph {
  char c;
  std::array<uint8_t, 5> rows;
};
constexpr std::array<Glyph, 24> kFont = {{
    {'0', {7, 5, 5, 5, 7}},
    {'1', {2, 6, 2, 2, 7}},
    {'2', {7, 1, 7, 4, 7}},
    {'3', {7, 1, 7, 1, 7}},
    {'4', {5, 5, 7, 1, 1}},
    {'5', {7, 4, 7, 1, 7}},
    {'6', {7, 4, 7, 5, 7}},
    {'7', {7, 1, 1, 1, 1}},
    {'8', {7, 5, 7, 5, 7}},
    {'9', {7, 5, 7, 1, 7}},
    {'.', {0, 0, 0, 0, 2}},
    {'-', {0, 0, 7, 0, 0}},
    {'E', {7, 4, 7, 4, 7}},
    // The letters of the axis titles.
    {'d', {1, 1, 7, 5, 7}},
    {'e', {7, 5, 7, 4, 7}},
    {'g', {3, 5, 3, 1, 6}},
    {'i', {2, 0, 2, 2, 2}},
    {'l', {6, 2, 2, 2, 2}},
    {'n', {0, 6, 5, 5, 5}},
    {'o', {0, 7, 5, 5, 7}},
    {'r', {0, 5, 6, 4, 4}},
    {'s', {3, 4, 2, 1, 6}},
    {'t', {2, 7, 2, 2, 3}},
    {'y', {5, 5, 3, 1, 6}},
}};
/// Font pixels are drawn as kFontScale x kFontScale squares; glyphs advance by 4 font pixels.
constexpr int64_t kFontScale = 2;
constexpr int64_t kGlyphAdvance = 4 * kFontScale;
constexpr int64_t kGlyphHeight = 5 * kFontScale;

class Canvas {
 public:
  Canvas(int64_t width, int64_t height)
      : width_(width), height_(height), pixels_(static_cast<size_t>(width * height * 3), 255) {}

  void set(int64_t x, int64_t y, PlotColour c) {
    if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
    const size_t i = static_cast<size_t>((y * width_ + x) * 3);
    pixels_[i] = c.r;
    pixels_[i + 1] = c.g;
    pixels_[i + 2] = c.b;
  }
  void rect(int64_t x0, int64_t y0, int64_t x1, int64_t y1, PlotColour c) {
    for (int64_t y = y0; y <= y1; ++y)
      for (int64_t x = x0; x <= x1; ++x) set(x, y, c);
  }
  /// A line `thickness` px wide (Bresenham, a square brush).
  void line(int64_t x0, int64_t y0, int64_t x1, int64_t y1, PlotColour c, int64_t thickness) {
    const int64_t dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int64_t sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int64_t err = dx + dy;
    const int64_t lo = -(thickness - 1) / 2, hi = thickness / 2;
    while (true) {
      rect(x0 + lo, y0 + lo, x0 + hi, y0 + hi, c);
      if (x0 == x1 && y0 == y1) break;
      const int64_t e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }
  void disc(int64_t cx, int64_t cy, int64_t radius, PlotColour c) {
    for (int64_t y = -radius; y <= radius; ++y)
      for (int64_t x = -radius; x <= radius; ++x)
        if (x * x + y * y <= radius * radius + radius) set(cx + x, cy + y, c);
  }
  /// Text in the 3 x 5 font with its top-left corner at (x, y); unknown characters are blank.
  void text(int64_t x, int64_t y, const std::string& s, PlotColour c) {
    for (char ch : s) {
      for (const Glyph& g : kFont) {
        if (g.c != ch) continue;
        for (int64_t row = 0; row < 5; ++row)
          for (int64_t col = 0; col < 3; ++col)
            if (g.rows[static_cast<size_t>(row)] & (4 >> col))
              rect(x + col * kFontScale, y + row * kFontScale, x + (col + 1) * kFontScale - 1,
                   y + (row + 1) * kFontScale - 1, c);
      }
      x += kGlyphAdvance;
    }
  }
  static int64_t text_width(const std::string& s) {
    return s.empty() ? 0 : static_cast<int64_t>(s.size()) * kGlyphAdvance - kFontScale;
  }
  std::vector<uint8_t> take() { return std::move(pixels_); }

 private:
  int64_t width_, height_;
  std::vector<uint8_t> pixels_;
};

/// 1, 2 or 5 times a power of ten, so that `range` holds about `target` steps.
double nice_step(double range, int target) {
  const double raw = range / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  return (norm < 1.5 ? 1.0 : norm < 3.0 ? 2.0 : norm < 7.0 ? 5.0 : 10.0) * magnitude;
}

/// A linear axis from 0: the top end (a multiple of the step) and the step.
struct LinearAxis {
  double top;
  double step;
};
LinearAxis linear_axis(double max_value, double cap) {
  if (!(max_value > 0.0) || !std::isfinite(max_value)) return {1.0, 0.2};
  const double padded = max_value * 1.05;
  if (cap > 0.0 && padded >= 0.8 * cap) return {cap, nice_step(cap, 5)};
  const double step = nice_step(padded, 5);
  return {std::ceil(padded / step - 1e-9) * step, step};
}

/// A linear tick's label: as many decimals as the step needs.
std::string linear_label(double value, double step) {
  const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  return fixed(value, decimals);
}

/// 10^exponent: decimal for -3..3, otherwise 1E<exponent>.
std::string decade_label(int exponent) {
  if (exponent >= 0 && exponent <= 3) return fixed(std::pow(10.0, exponent), 0);
  if (exponent < 0 && exponent >= -3) return fixed(std::pow(10.0, exponent), -exponent);
  return "1E" + std::to_string(exponent);
}

}  // namespace

PlotColour plot_colour(size_t index) { return kPalette[index % kPalette.size()]; }

std::string masker_config_text(const std::string& value) {
  const size_t start = value.find_first_not_of(" \t\r\n");
  if (start != std::string::npos && value[start] == '[') return value;
  std::ifstream file(value, std::ios::binary);
  if (!file.good()) {
    throw std::invalid_argument("sparse-eval: --maskers '" + value +
                                "' is neither a JSON array (starting with '[') nor a readable "
                                "file");
  }
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

SparseEvalData sparse_eval_data(const SparseEvalOptions& options) {
  SparseEvalData data;
  std::vector<int64_t> lengths = options.lengths;
  std::ostringstream summary;
  if (!options.qkv.empty()) {
    const std::string& path = options.qkv;
    std::ifstream file(path, std::ios::binary);
    if (!file.good()) throw std::invalid_argument("sparse-eval: cannot open --qkv '" + path + "'");
    const std::vector<char> bytes((std::istreambuf_iterator<char>(file)),
                                  std::istreambuf_iterator<char>());
    torch::IValue root;
    try {
      root = torch::pickle_load(bytes);
    } catch (const c10::Error& e) {
      throw std::invalid_argument("sparse-eval: --qkv '" + path + "' is not a torch.save file: " +
                                  first_line(e.what_without_backtrace()));
    }
    if (!root.isGenericDict()) {
      throw std::invalid_argument("sparse-eval: --qkv '" + path +
                                  "' expected a dict {\"q\", \"k\", \"v\"}, got " +
                                  std::string(root.tagKind()));
    }
    const auto dict = root.toGenericDict();
    data.q = qkv_tensor(dict, "q", path);
    data.k = qkv_tensor(dict, "k", path);
    data.v = qkv_tensor(dict, "v", path);
    const auto &q = data.q, &k = data.k, &v = data.v;
    if (q.size(0) != k.size(0) || k.size(0) != v.size(0) || k.size(1) != v.size(1) ||
        k.size(2) != v.size(2) || q.size(3) != k.size(3) || k.size(1) == 0 ||
        q.size(1) % k.size(1) != 0) {
      throw std::invalid_argument(
          "sparse-eval: --qkv '" + path + "': expected q [B, H, Tq, D], k [B, Hkv, Tk, D], v [B, "
          "Hkv, Tk, Dv] with H divisible by Hkv, got q " + shape_text(q.sizes()) + ", k " +
          shape_text(k.sizes()) + ", v " + shape_text(v.sizes()));
    }
    if (data.v.scalar_type() != data.q.scalar_type() ||
        data.k.scalar_type() != data.q.scalar_type()) {
      data.k = data.k.to(data.q.scalar_type());
      data.v = data.v.to(data.q.scalar_type());
    }
    const int64_t file_len = k.size(2);
    if (lengths.empty()) lengths = {file_len};
    std::vector<int64_t> skipped;
    std::vector<int64_t> kept;
    for (int64_t length : lengths) (length <= file_len ? kept : skipped).push_back(length);
    if (kept.empty()) {
      throw std::invalid_argument("sparse-eval: every --lengths value exceeds the --qkv file's "
                                  "Tk = " + std::to_string(file_len));
    }
    lengths = kept;
    summary << "--qkv " << path << ": q " << q.sizes() << ", k " << k.sizes() << ", v "
            << v.sizes() << (q.scalar_type() == torch::kFloat64 ? " float64" : " float32")
            << "; lengths are prefixes k[:, :, :L] with all the file's queries";
    if (!skipped.empty()) {
      summary << " (skipped, longer than the file: ";
      for (size_t i = 0; i < skipped.size(); ++i) summary << (i ? ", " : "") << skipped[i];
      summary << ")";
    }
  } else {
    if (options.heads % options.kv_heads != 0) {
      throw std::invalid_argument("sparse-eval: --heads " + std::to_string(options.heads) +
                                  " is not divisible by --kv-heads " +
                                  std::to_string(options.kv_heads));
    }
    if (lengths.empty()) lengths = kDefaultLengths;
    const int64_t max_len = *std::max_element(lengths.begin(), lengths.end());
    torch::manual_seed(options.seed);
    data.q = torch::randn({options.batch, options.heads, options.queries, options.head_dim});
    data.k = torch::randn({options.batch, options.kv_heads, max_len, options.head_dim});
    data.v = torch::randn({options.batch, options.kv_heads, max_len, options.head_dim});
    summary << "random (seed " << options.seed << "): q " << data.q.sizes() << ", k/v ["
            << options.batch << ", " << options.kv_heads << ", Tk, " << options.head_dim
            << "] float32 (the prefixes of one draw at Tk = " << max_len << ")";
  }
  std::sort(lengths.begin(), lengths.end());
  lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
  const int64_t q_len = data.q.size(2);
  for (int64_t length : lengths) {
    if (length < 1 || length < q_len) {
      throw std::invalid_argument("sparse-eval: length " + std::to_string(length) +
                                  " is shorter than the " + std::to_string(q_len) +
                                  " queries (they are aligned to the end of the keys)");
    }
  }
  data.lengths = lengths;
  data.summary = summary.str();
  return data;
}

std::vector<SparseEvalRow> sparse_eval(const std::vector<std::string>& configs,
                                       const SparseEvalData& data,
                                       int repeats,
                                       uint64_t seed) {
  torch::NoGradGuard no_grad;
  std::vector<sparse::ResearchAttention> attentions;
  for (size_t i = 0; i < configs.size(); ++i) {
    try {
      attentions.push_back(sparse::ResearchAttention::from_json(configs[i]));
    } catch (const c10::Error& e) {
      throw std::invalid_argument("sparse-eval: config " + std::to_string(i) + ": " +
                                  first_line(e.what_without_backtrace()));
    }
  }
  const double scaling = 1.0 / std::sqrt(static_cast<double>(data.q.size(3)));
  const torch::Tensor no_mask;
  std::vector<torch::Tensor> keys, values, dense;
  std::vector<double> dense_ms;
  for (int64_t length : data.lengths) {
    keys.push_back(data.k.narrow(2, 0, length).contiguous());
    values.push_back(data.v.narrow(2, 0, length).contiguous());
    torch::Tensor out;
    dense_ms.push_back(median_ms(repeats, [] {}, [&] {
      out = sparse::dense_attention(data.q, keys.back(), values.back(), no_mask, scaling);
    }));
    dense.push_back(out);
  }

  std::vector<SparseEvalRow> rows;
  for (size_t c = 0; c < attentions.size(); ++c) {
    for (size_t l = 0; l < data.lengths.size(); ++l) {
      std::optional<sparse::ResearchAttentionResult> result;
      SparseEvalRow row;
      row.config = c;
      row.length = data.lengths[l];
      try {
        row.sparse_ms = median_ms(
            repeats, [&] { torch::manual_seed(seed + 1); },
            [&] {
              sparse::MaskerState state;
              result.emplace(attentions[c].custom_attention(data.q, keys[l], values[l], no_mask,
                                                            scaling, /*dropout=*/0.0, state,
                                                            /*layer_idx=*/0));
            });
      } catch (const c10::Error& e) {
        throw std::invalid_argument("sparse-eval: config " + std::to_string(c) + " at length " +
                                    std::to_string(row.length) + ": " +
                                    first_line(e.what_without_backtrace()));
      }
      // An EMPTY mask (no masker chose a key, e.g. a top-k of int(0.01 * 64) = 0 keys) means
      // plain dense attention: it counts as density 1, not 0.
      row.empty_mask = result->mask.is_empty();
      row.density = row.empty_mask ? 1.0 : result->mask.density();
      row.rel_error = relative_error(result->output, dense[l]);
      row.dense_ms = dense_ms[l];
      rows.push_back(row);
    }
  }
  return rows;
}

std::vector<uint8_t> plot_sparse_eval(const std::vector<SparseEvalRow>& rows,
                                      size_t num_configs,
                                      int64_t width,
                                      int64_t height,
                                      bool& log_y) {
  const PlotColour kBlack{"black", 0, 0, 0};
  const PlotColour kGrid{"grey", 225, 225, 225};
  // The plot area: room on the left and below for the tick labels.
  const int64_t left = 64, right = width - 28, top = 32, bottom = height - 48;

  double max_density = 0.0, max_error = 0.0;
  double min_positive = std::numeric_limits<double>::infinity();
  for (const SparseEvalRow& r : rows) {
    max_density = std::max(max_density, r.density);
    if (std::isfinite(r.rel_error)) max_error = std::max(max_error, r.rel_error);
    if (r.rel_error > 0.0 && std::isfinite(r.rel_error))
      min_positive = std::min(min_positive, r.rel_error);
  }
  const LinearAxis x_axis = linear_axis(max_density, 1.0);
  log_y = std::isfinite(min_positive) && max_error / min_positive > 100.0;
  double y_lo = 0.0, y_hi = 1.0;
  LinearAxis y_axis{1.0, 0.2};
  if (log_y) {
    y_lo = std::floor(std::log10(min_positive));
    y_hi = std::ceil(std::log10(max_error));
    if (y_hi <= y_lo) y_hi = y_lo + 1.0;
  } else {
    y_axis = linear_axis(max_error, 0.0);
    y_hi = y_axis.top;
  }
  auto px = [&](double density) {
    return left + static_cast<int64_t>(std::lround(density / x_axis.top *
                                                   static_cast<double>(right - left)));
  };
  auto py = [&](double error) {
    double y = error;
    if (log_y) y = error > 0.0 && std::isfinite(error) ? std::log10(error) : y_lo;
    if (!std::isfinite(y)) y = y_hi;  // an infinite error sits on the top edge
    y = std::clamp(y, y_lo, y_hi);
    return bottom - static_cast<int64_t>(std::lround((y - y_lo) / (y_hi - y_lo) *
                                                     static_cast<double>(bottom - top)));
  };

  Canvas canvas(width, height);
  // Grid lines, tick marks and labels.
  const int64_t x_ticks = static_cast<int64_t>(std::lround(x_axis.top / x_axis.step));
  for (int64_t i = 0; i <= x_ticks; ++i) {
    const double value = static_cast<double>(i) * x_axis.step;
    const int64_t x = px(value);
    if (i > 0) canvas.line(x, top, x, bottom - 1, kGrid, 1);
    canvas.line(x, bottom, x, bottom + 5, kBlack, 1);
    const std::string label = linear_label(value, x_axis.step);
    canvas.text(x - Canvas::text_width(label) / 2, bottom + 10, label, kBlack);
  }
  std::vector<std::pair<double, std::string>> y_ticks;
  if (log_y) {
    const int decades = static_cast<int>(y_hi - y_lo);
    const int every = decades > 8 ? 2 : 1;
    for (int e = static_cast<int>(y_lo); e <= static_cast<int>(y_hi); e += every)
      y_ticks.emplace_back(std::pow(10.0, e), decade_label(e));
  } else {
    const int64_t n = static_cast<int64_t>(std::lround(y_axis.top / y_axis.step));
    for (int64_t i = 0; i <= n; ++i) {
      const double value = static_cast<double>(i) * y_axis.step;
      y_ticks.emplace_back(value, linear_label(value, y_axis.step));
    }
  }
  for (size_t i = 0; i < y_ticks.size(); ++i) {
    const int64_t y = py(y_ticks[i].first);
    if (i > 0) canvas.line(left + 1, y, right, y, kGrid, 1);
    canvas.line(left - 5, y, left, y, kBlack, 1);
    const std::string& label = y_ticks[i].second;
    canvas.text(left - 9 - Canvas::text_width(label), y - kGlyphHeight / 2, label, kBlack);
  }
  // The axes and their titles.
  canvas.line(left, top, left, bottom, kBlack, 1);
  canvas.line(left, bottom, right, bottom, kBlack, 1);
  const std::string x_title = "density";
  const std::string y_title = log_y ? "log rel error" : "rel error";
  canvas.text((left + right - Canvas::text_width(x_title)) / 2, bottom + 28, x_title, kBlack);
  canvas.text(8, 8, y_title, kBlack);

  // One polyline per configuration, in length order (rows come sorted by length), then the
  // points on top.
  for (size_t c = 0; c < num_configs; ++c) {
    const PlotColour colour = plot_colour(c);
    std::vector<std::pair<int64_t, int64_t>> points;
    for (const SparseEvalRow& r : rows)
      if (r.config == c) points.emplace_back(px(r.density), py(r.rel_error));
    for (size_t i = 1; i < points.size(); ++i)
      canvas.line(points[i - 1].first, points[i - 1].second, points[i].first, points[i].second,
                  colour, 2);
    for (const auto& [x, y] : points) canvas.disc(x, y, 4, colour);
  }
  return canvas.take();
}

int run_sparse_eval(const SparseEvalOptions& options, std::ostream& out) {
  std::vector<std::string> configs;
  for (const std::string& value : options.maskers) configs.push_back(masker_config_text(value));
  if (configs.empty()) configs = kDefaultSparseConfigs;
  // Parse every configuration before any work, so a typo fails at once.
  for (size_t i = 0; i < configs.size(); ++i) {
    try {
      sparse::ResearchAttention::from_json(configs[i]);
    } catch (const c10::Error& e) {
      throw std::invalid_argument("sparse-eval: config " + std::to_string(i) + ": " +
                                  first_line(e.what_without_backtrace()));
    }
  }
  const SparseEvalData data = sparse_eval_data(options);
  const std::vector<SparseEvalRow> rows = sparse_eval(configs, data, options.repeats, options.seed);

  const double scaling = 1.0 / std::sqrt(static_cast<double>(data.q.size(3)));
  const int threads = torch::get_num_threads();
  out << "attnkit sparse-eval: " << data.summary << "\n"
      << "scaling " << scaling << ", no attention mask, queries aligned to the end of the keys; "
      << threads << (threads == 1 ? " thread" : " threads") << ", times are medians of "
      << options.repeats << "; rel error = ||sparse - dense||_F / ||dense||_F\n\n";
  for (size_t i = 0; i < configs.size(); ++i) {
    out << "config " << i;
    if (!options.png.empty()) out << " (" << plot_colour(i).name << ")";
    out << ": " << one_line(configs[i]) << "\n";
  }
  out << "\n";
  std::vector<std::vector<std::string>> table = {
      {"config", "length", "density", "rel error", "sparse ms", "dense ms"}};
  bool any_empty = false;
  for (const SparseEvalRow& r : rows) {
    any_empty = any_empty || r.empty_mask;
    table.push_back({std::to_string(r.config), std::to_string(r.length),
                     fixed(r.density, 4) + (r.empty_mask ? "*" : ""),
                     scientific(r.rel_error, 3), fixed(r.sparse_ms, 3), fixed(r.dense_ms, 3)});
  }
  print_table(out, table);
  if (any_empty) {
    out << "* the maskers chose no key (an EMPTY mask), so the attention ran dense: density 1\n";
  }

  if (!options.png.empty()) {
    constexpr int64_t kWidth = 640, kHeight = 480;
    bool log_y = false;
    const std::vector<uint8_t> pixels =
        plot_sparse_eval(rows, configs.size(), kWidth, kHeight, log_y);
    write_png(options.png, kWidth, kHeight, pixels, /*rgb=*/true);
    out << "\nwrote " << options.png << ": " << kWidth << " x " << kHeight
        << " px; x = density, y = relative error (" << (log_y ? "log10 scale" : "linear")
        << "); one colour per config (see above), points joined in length order\n";
  }
  return 0;
}

}  // namespace attnkit::cli
