#include "commands.h"

#include "blas_check.h"
#include "registry.h"

#include <torch/torch.h>

#include <algorithm>
#include <iomanip>
#include <sstream>
#include <vector>

namespace attnkit::cli {

namespace {

std::string fixed(double value, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << value;
  return s.str();
}

/// 1234567 -> "1,234,567"
std::string grouped(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value), text;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) text += ',';
    text += digits[i];
  }
  return value < 0 ? "-" + text : text;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << torch::IntArrayRef(shape);
  return s.str();
}

/// "slots [2, 8, 256]", or just the shape when the tensor has no name.
std::string named_shape(const std::string& name, const std::vector<int64_t>& shape) {
  return name.empty() ? shape_text(shape) : name + " " + shape_text(shape);
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string text;
  for (const std::string& part : parts) text += (text.empty() ? "" : separator) + part;
  return text;
}

/// Prints rows as columns padded to their widest cell, with a rule under the header row. The first
/// `text_columns` columns are left-aligned, the others (numbers) right-aligned.
void print_table(std::ostream& out,
                 const std::vector<std::vector<std::string>>& rows,
                 size_t text_columns = 1) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    std::string line;
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const std::string& cell = rows[r][c];
      const std::string pad(width[c] - cell.size(), ' ');
      line += (c == 0 ? "" : "  ") + (c < text_columns ? cell + pad : pad + cell);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
    if (r == 0) {
      size_t total = 0;
      for (size_t w : width) total += w + 2;
      out << std::string(total - 2, '-') << "\n";
    }
  }
}

std::string shape_summary(const MeasureOptions& o) {
  std::ostringstream s;
  s << "batch " << o.batch_size << ", seq " << o.seq_len << ", dim " << o.config.dim << ", heads "
    << o.config.num_heads << ", kv_heads " << o.config.num_kv_heads << ", "
    << (o.config.causal ? "causal" : "non-causal") << ", " << dtype_name(o.dtype);
  return s.str();
}

std::string machine_summary() {
  const std::string blas = mapped_blas_library();
  const int threads = torch::get_num_threads();
  return std::to_string(threads) + (threads == 1 ? " thread" : " threads") + ", BLAS " +
         (blas.empty() ? std::string("not found in /proc/self/maps") : blas);
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

int run_list(std::ostream& out) {
  std::vector<std::vector<std::string>> rows = {{"name", "class", "paper"}};
  for (const Mechanism& m : mechanisms())
    rows.push_back({m.name, m.class_name, to_string(m.paper)});
  print_table(out, rows, /*text_columns=*/3);
  return 0;
}

int run_one(const std::string& name, const MeasureOptions& options, std::ostream& out) {
  const Mechanism& mechanism = find_mechanism(name);
  const Measurement m = measure(mechanism, options);
  const std::string repeats = " (median of " + std::to_string(options.repeats) + ")";
  std::vector<std::pair<std::string, std::string>> lines = {
      {"mechanism", mechanism.name + ": " + mechanism.class_name + ", " + mechanism.description},
      {"paper", to_string(mechanism.paper)},
      {"module", m.module_text},
      {"shape", shape_summary(options)},
      {"machine", machine_summary()},
      {"input", named_shape(m.input_name, m.input_shape)},
      {"output", named_shape(m.output_name, m.output_shape)},
      {"parameters", grouped(m.num_parameters)},
      {"forward", fixed(m.forward_ms, 3) + " ms" + repeats + ", no autograd"},
      {"backward", fixed(m.backward_ms, 3) + " ms" + repeats + ", backward() alone"},
  };
  if (m.supports_decoding) {
    lines.push_back({"decode", "yes (state: " + join(m.state_entries, ", ") + ")"});
    lines.push_back({"KV cache", grouped(m.kv_bytes_per_token) + " bytes/token"});
    std::ostringstream diff;
    diff << std::scientific << std::setprecision(2) << m.decode_max_abs_diff;
    lines.push_back({"decode check", "max |decode - full forward| = " + diff.str()});
  } else if (m.set_to_set) {
    lines.push_back({"decode", "no (set-to-set)"});
  } else {
    lines.push_back({"decode", options.config.causal ? "no" : "no (non-causal)"});
  }
  for (const auto& [key, value] : lines) out << std::left << std::setw(14) << key << value << "\n";
  out << std::right;
  return 0;
}

int run_tour(const MeasureOptions& options, std::ostream& out, std::string& error) {
  out << "attnkit tour: " << shape_summary(options) << "\n"
      << machine_summary() << "; fwd = forward without autograd, bwd = backward() alone, median of "
      << options.repeats << "\n\n";
  std::vector<std::vector<std::string>> rows = {
      {"mechanism", "params", "fwd ms", "bwd ms", "decode", "KV bytes/token"}};
  std::vector<std::string> failures;
  for (const Mechanism& mechanism : mechanisms()) {
    try {
      const Measurement m = measure(mechanism, options);
      rows.push_back({mechanism.name, grouped(m.num_parameters), fixed(m.forward_ms, 2),
                      fixed(m.backward_ms, 2), m.supports_decoding ? "yes" : "no",
                      m.supports_decoding ? grouped(m.kv_bytes_per_token) : "-"});
    } catch (const c10::Error& e) {
      failures.push_back(mechanism.name + ": " + first_line(e.what_without_backtrace()));
      rows.push_back({mechanism.name, "error", "-", "-", "-", "-"});
    } catch (const std::exception& e) {
      failures.push_back(mechanism.name + ": " + first_line(e.what()));
      rows.push_back({mechanism.name, "error", "-", "-", "-", "-"});
    }
  }
  print_table(out, rows);
  if (failures.empty()) return 0;
  error = std::to_string(failures.size()) + " of " + std::to_string(mechanisms().size()) +
          " mechanisms failed; first: " + failures.front();
  return 2;
}

}  // namespace attnkit::cli
