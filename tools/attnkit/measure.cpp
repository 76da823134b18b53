#include "measure.h"

#include <attnkit/attnkit.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <stdexcept>

namespace attnkit::cli {

namespace {

using Clock = std::chrono::steady_clock;

double elapsed_ms(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "float32") return torch::kFloat32;
  if (name == "float64") return torch::kFloat64;
  throw std::invalid_argument("unknown dtype '" + name + "'; valid: float32, float64");
}

std::string dtype_name(torch::Dtype dtype) {
  return dtype == torch::kFloat64 ? "float64" : "float32";
}

Measurement measure(const Mechanism& mechanism, const MeasureOptions& options) {
  TORCH_CHECK(options.batch_size > 0 && options.seq_len > 0 && options.repeats > 0,
              "batch, seq and repeats must be positive, got ", options.batch_size, ", ",
              options.seq_len, ", ", options.repeats);
  torch::manual_seed(options.seed);
  Attention attn = mechanism.build(options.config);
  attn->to(options.dtype);

  Measurement m;
  std::ostringstream text;
  attn->pretty_print(text);
  m.module_text = text.str();
  for (const torch::Tensor& p : attn->parameters()) m.num_parameters += p.numel();

  const auto tensor_options = torch::TensorOptions().dtype(options.dtype);
  const torch::Tensor x =
      torch::randn({options.batch_size, options.seq_len, options.config.dim}, tensor_options);
  m.input_shape = x.sizes().vec();

  // Forward: inference, no graph recorded. One untimed warm-up starts the thread pools.
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    std::vector<double> times;
    for (int r = 0; r <= options.repeats; ++r) {
      const auto start = Clock::now();
      y = attn->forward(x);
      if (r > 0) times.push_back(elapsed_ms(start));
    }
    m.forward_ms = median(times);
  }
  m.output_shape = y.sizes().vec();

  // Backward: time only backward(), with a fixed upstream gradient.
  {
    const torch::Tensor grad_out = torch::randn_like(y);
    torch::Tensor x_leaf = x.detach().requires_grad_(true);
    std::vector<double> times;
    for (int r = 0; r <= options.repeats; ++r) {
      attn->zero_grad();
      x_leaf.mutable_grad() = torch::Tensor();
      torch::Tensor y_leaf = attn->forward(x_leaf);
      const auto start = Clock::now();
      y_leaf.backward(grad_out);
      if (r > 0) times.push_back(elapsed_ms(start));
    }
    m.backward_ms = median(times);
    attn->zero_grad();
  }

  // Decoding: prefill seq_len - 1 tokens of one sequence, decode the last one, and compare it
  // with the full forward of the same sequence.
  m.supports_decoding = attn->supports_decoding();
  if (m.supports_decoding) {
    torch::NoGradGuard no_grad;
    const int64_t t = options.seq_len;
    const torch::Tensor seq = x.narrow(0, 0, 1);
    DecodeState state = attn->init_state(/*batch_size=*/1);
    if (t > 1) attn->forward(seq.narrow(1, 0, t - 1), state);
    const torch::Tensor y_last = attn->forward(seq.narrow(1, t - 1, 1), state);
    const torch::Tensor y_full = attn->forward(seq).narrow(1, t - 1, 1);
    m.kv_bytes_per_token = state.bytes() / std::max<int64_t>(state.length(), 1);
    m.state_entries = state.names();
    m.decode_max_abs_diff = (y_last - y_full).abs().max().item<double>();
  }
  return m;
}

}  // namespace attnkit::cli
