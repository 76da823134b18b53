#include "bench.h"

// The benchmarks' yardsticks (header-only, not library API).
#include "machine_limits.h"

#include <attnkit/functional/flex_attention.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <limits>
#include <vector>

namespace attnkit::cli {

namespace {

namespace ml = attnkit::machine_limits;

// Median wall time in seconds of `fn` over `repeats` runs, after one untimed warm-up.
double median_seconds(int repeats, const std::function<void()>& fn) {
  fn();
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// LibTorch's composed attention: scores, softmax, weighted sum (K/V repeated per query head).
torch::Tensor composed_attention(const torch::Tensor& q,
                                 const torch::Tensor& k,
                                 const torch::Tensor& v,
                                 bool causal) {
  const int64_t group = q.size(1) / k.size(1), T = q.size(2);
  torch::Tensor kk = group > 1 ? k.repeat_interleave(group, 1) : k;
  torch::Tensor vv = group > 1 ? v.repeat_interleave(group, 1) : v;
  torch::Tensor s = torch::matmul(q, kk.transpose(-1, -2)) / std::sqrt(double(q.size(3)));
  if (causal) {
    s.masked_fill_(torch::ones({T, T}, q.options().dtype(torch::kBool)).triu(1),
                   -std::numeric_limits<float>::infinity());
  }
  return torch::matmul(torch::softmax(s, -1), vv);
}

}  // namespace

int run_bench(const BenchOptions& o, std::ostream& out) {
  TORCH_CHECK(o.num_heads % o.num_kv_heads == 0, "attnkit bench: --heads (", o.num_heads,
              ") must be divisible by --kv-heads (", o.num_kv_heads, ")");
  torch::NoGradGuard no_grad;
  torch::manual_seed(o.seed);
  const int64_t B = o.batch_size, H = o.num_heads, Hkv = o.num_kv_heads, T = o.seq_len;
  const int64_t D = o.head_dim;
  torch::Tensor q = torch::randn({B, H, T, D}), k = torch::randn({B, Hkv, T, D});
  torch::Tensor v = torch::randn({B, Hkv, T, D});

  // QK^T and PV: 4 B H T^2 D FLOPs, half of them under the causal mask.
  const double flops = 4.0 * B * H * T * T * D * (o.causal ? 0.5 : 1.0);
  const auto fused_options = functional::FlexAttentionOptions().causal(o.causal);
  const double fused =
      median_seconds(o.repeats, [&] { functional::flex_attention(q, k, v, fused_options); });
  const double composed = median_seconds(o.repeats, [&] { composed_attention(q, k, v, o.causal); });
  // FMA peak (1 and all threads), streaming read, sgemm 2048^3 (median of o.repeats).
  const ml::Limits limits = ml::measure(0, o.repeats);
  const double sgemm_flops = limits.sgemm;
  const double fused_flops = flops / fused;

  char line[256];
  std::snprintf(line, sizeof(line),
                "shape B%lld H%lld Hkv%lld T%lld D%lld %s, %d threads, medians of %d\n",
                static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(Hkv),
                static_cast<long long>(T), static_cast<long long>(D),
                o.causal ? "causal" : "non-causal", torch::get_num_threads(), o.repeats);
  out << line;
  std::snprintf(line, sizeof(line), "fused flex_attention  %10.2f ms  %8.1f GFLOP/s\n", fused * 1e3,
                flops / fused / 1e9);
  out << line;
  std::snprintf(line, sizeof(line), "composed LibTorch     %10.2f ms  %8.1f GFLOP/s\n",
                composed * 1e3, flops / composed / 1e9);
  out << line;
  const double n = 2048;
  std::snprintf(line, sizeof(line), "sgemm 2048^3          %10.2f ms  %8.1f GFLOP/s\n",
                2.0 * n * n * n / sgemm_flops * 1e3, sgemm_flops / 1e9);
  out << line;
  out << "machine limits (this process):\n" << ml::describe(limits) << ml::describe_blas(limits);
  std::snprintf(line, sizeof(line), "fused / sgemm %.2f, fused vs composed %.2fx faster\n",
                fused_flops / sgemm_flops, composed / fused);
  out << line;
  out << "fused " << ml::format("%.1f GFLOP/s ", fused_flops / 1e9)
      << ml::flop_ratios(fused_flops, limits) << "\n";
  return 0;
}

}  // namespace attnkit::cli
