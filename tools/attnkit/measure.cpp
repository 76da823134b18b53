#include "measure.h"

#include <attnkit/attnkit.h>

#include <algorithm>
#include <chrono>
#include <functional>
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

namespace {

/// Times `forward` on x: without autograd, then backward() alone with a fixed upstream gradient.
/// Fills the output shape and the two medians.
void time_forward_backward(torch::nn::Module& module,
                           const std::function<torch::Tensor(const torch::Tensor&)>& forward,
                           const torch::Tensor& x,
                           int repeats,
                           Measurement& m) {
  // Forward: inference, no graph recorded. One untimed warm-up starts the thread pools.
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    std::vector<double> times;
    for (int r = 0; r <= repeats; ++r) {
      const auto start = Clock::now();
      y = forward(x);
      if (r > 0) times.push_back(elapsed_ms(start));
    }
    m.forward_ms = median(times);
  }
  m.output_shape = y.sizes().vec();

  // Backward: time only backward(), with a fixed upstream gradient.
  const torch::Tensor grad_out = torch::randn_like(y);
  torch::Tensor x_leaf = x.detach().requires_grad_(true);
  std::vector<double> times;
  for (int r = 0; r <= repeats; ++r) {
    module.zero_grad();
    x_leaf.mutable_grad() = torch::Tensor();
    torch::Tensor y_leaf = forward(x_leaf);
    const auto start = Clock::now();
    y_leaf.backward(grad_out);
    if (r > 0) times.push_back(elapsed_ms(start));
  }
  m.backward_ms = median(times);
  module.zero_grad();
}

/// pretty_print and parameter count.
void describe(const torch::nn::Module& module, Measurement& m) {
  std::ostringstream text;
  module.pretty_print(text);
  m.module_text = text.str();
  for (const torch::Tensor& p : module.parameters()) m.num_parameters += p.numel();
}

Measurement measure_set(const Mechanism& mechanism, const MeasureOptions& options) {
  MechanismConfig config = options.config;
  config.seq_len = options.seq_len;
  SetModule set = mechanism.build_set(config);
  set.module->to(options.dtype);

  Measurement m;
  m.set_to_set = true;
  describe(*set.module, m);
  m.input_name = set.input_name;
  m.output_name = set.output_name;
  std::vector<int64_t> shape = {options.batch_size};
  shape.insert(shape.end(), set.input_shape.begin(), set.input_shape.end());
  const torch::Tensor x = torch::randn(shape, torch::TensorOptions().dtype(options.dtype));
  m.input_shape = x.sizes().vec();
  time_forward_backward(*set.module, set.forward, x, options.repeats, m);
  return m;
}

Measurement measure_sequence(const Mechanism& mechanism, const MeasureOptions& options) {
  MechanismConfig config = options.config;
  config.seq_len = options.seq_len;
  Attention attn = mechanism.build_sequence(config);
  attn->to(options.dtype);

  Measurement m;
  describe(*attn, m);
  const torch::Tensor x = torch::randn({options.batch_size, options.seq_len, options.config.dim},
                                       torch::TensorOptions().dtype(options.dtype));
  m.input_shape = x.sizes().vec();
  time_forward_backward(
      *attn, [&attn](const torch::Tensor& input) { return attn->forward(input); }, x,
      options.repeats, m);

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

}  // namespace

Measurement measure(const Mechanism& mechanism, const MeasureOptions& options) {
  TORCH_CHECK(options.batch_size > 0 && options.seq_len > 0 && options.repeats > 0,
              "batch, seq and repeats must be positive, got ", options.batch_size, ", ",
              options.seq_len, ", ", options.repeats);
  torch::manual_seed(options.seed);
  return mechanism.set_to_set() ? measure_set(mechanism, options)
                                : measure_sequence(mechanism, options);
}

}  // namespace attnkit::cli
