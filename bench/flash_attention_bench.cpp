// Benchmarks of the fused flash attention against the machine's limits, measured in the same
// run: OpenBLAS sgemm (through at::mm) for FLOP/s, a streaming read for bytes/s, and LibTorch's
// composed path (matmul, softmax, matmul). Ratios are computed from medians of repeats and
// printed after the Google Benchmark table.
//
//   build-eng/bench/flash_attention_bench --benchmark_repetitions=5 \
//       --benchmark_report_aggregates_only=true

#include <attnkit/attnkit.h>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdio>
#include <map>
#include <string>
#include <thread>

namespace {

using attnkit::functional::FlexAttentionOptions;

// 2 * M * N * K for an [M, K] x [K, N] product.
double gemm_flops(double m, double n, double k) { return 2.0 * m * n * k; }

// Forward FLOPs of attention: QK^T and PV; a causal pass counts half (Tq == Tk).
double attention_flops(
    int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, int64_t Dv, bool causal) {
  const double f = gemm_flops(static_cast<double>(B * H * Tq), Tk, D) +
                   gemm_flops(static_cast<double>(B * H * Tq), Dv, Tk);
  return causal ? f / 2 : f;
}

void set_flops(benchmark::State& state, double flops) {
  state.counters["FLOP/s"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

// The machine's practical FLOP limit: sgemm of square fp32 matrices (OpenBLAS via at::mm).
void BM_Sgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  for (auto _ : state) {
    at::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_flops(state, gemm_flops(n, n, n));
}
BENCHMARK(BM_Sgemm)->ArgNames({"N"})->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

// The machine's read bandwidth: a streaming sum of 1 GiB of fp32.
void BM_ReadBandwidth(benchmark::State& state) {
  torch::Tensor x = torch::rand({int64_t{1} << 28});
  for (auto _ : state) benchmark::DoNotOptimize(x.sum().item<float>());
  state.counters["bytes/s"] = benchmark::Counter(static_cast<double>(x.nbytes()),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ReadBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();

// Fused forward: args B, H, T, D, causal.
void BM_FlashForward(benchmark::State& state) {
  const int64_t B = state.range(0), H = state.range(1), T = state.range(2), D = state.range(3);
  const bool causal = state.range(4) != 0;
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({B, H, T, D}), k = torch::randn({B, H, T, D}),
                v = torch::randn({B, H, T, D});
  auto o = FlexAttentionOptions().causal(causal);
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, o);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  set_flops(state, attention_flops(B, H, T, T, D, D, causal));
}

// bf16 fused forward (fp32 accumulation), same args.
void BM_FlashForwardBf16(benchmark::State& state) {
  const int64_t B = state.range(0), H = state.range(1), T = state.range(2), D = state.range(3);
  const bool causal = state.range(4) != 0;
  torch::NoGradGuard no_grad;
  auto bf = torch::kBFloat16;
  torch::Tensor q = torch::randn({B, H, T, D}).to(bf), k = torch::randn({B, H, T, D}).to(bf),
                v = torch::randn({B, H, T, D}).to(bf);
  auto o = FlexAttentionOptions().causal(causal);
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, o);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  set_flops(state, attention_flops(B, H, T, T, D, D, causal));
}

// LibTorch's composed path: matmul, (masked) softmax, matmul.
void BM_Composed(benchmark::State& state) {
  const int64_t B = state.range(0), H = state.range(1), T = state.range(2), D = state.range(3);
  const bool causal = state.range(4) != 0;
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({B, H, T, D}), k = torch::randn({B, H, T, D}),
                v = torch::randn({B, H, T, D});
  torch::Tensor future = torch::ones({T, T}, torch::kBool).triu(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (auto _ : state) {
    torch::Tensor s = torch::matmul(q, k.transpose(-1, -2)) * scale;
    if (causal) s.masked_fill_(future, -std::numeric_limits<float>::infinity());
    torch::Tensor out = torch::matmul(torch::softmax(s, -1), v);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  set_flops(state, attention_flops(B, H, T, T, D, D, causal));
}

void dense_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "H", "T", "D", "causal"});
  for (int64_t causal : {0, 1}) {
    b->Args({1, 8, 4096, 128, causal});
    b->Args({1, 8, 2048, 64, causal});
  }
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_FlashForward)->Apply(dense_args);
BENCHMARK(BM_Composed)->Apply(dense_args);
BENCHMARK(BM_FlashForwardBf16)
    ->ArgNames({"B", "H", "T", "D", "causal"})
    ->Args({1, 8, 4096, 128, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Decode: one query per sequence, Tk keys, Hq query heads over Hkv kv heads; bytes of K and V
// read per second.
void BM_Decode(benchmark::State& state) {
  const int64_t Hq = state.range(0), Hkv = state.range(1), Tk = state.range(2), D = state.range(3);
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({1, Hq, 1, D}), k = torch::randn({1, Hkv, Tk, D}),
                v = torch::randn({1, Hkv, Tk, D});
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  state.counters["bytes/s"] = benchmark::Counter(static_cast<double>(k.nbytes() + v.nbytes()),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Decode)
    ->ArgNames({"Hq", "Hkv", "Tk", "D"})
    ->Args({32, 8, 32768, 128})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Forward + backward (gradients of q, k, v) at a training-size shape.
void BM_FlashForwardBackward(benchmark::State& state) {
  const int64_t B = state.range(0), H = state.range(1), T = state.range(2), D = state.range(3);
  const bool causal = state.range(4) != 0;
  torch::Tensor q = torch::randn({B, H, T, D}).requires_grad_(true);
  torch::Tensor k = torch::randn({B, H, T, D}).requires_grad_(true);
  torch::Tensor v = torch::randn({B, H, T, D}).requires_grad_(true);
  torch::Tensor dout = torch::randn({B, H, T, D});
  auto o = FlexAttentionOptions().causal(causal);
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, o);
    r.output.backward(dout);
    benchmark::DoNotOptimize(q.grad().data_ptr());
  }
  // Forward 2 GEMMs + backward 4 GEMMs (dV, dP, dQ, dK) + recomputed S: 7 / 2 of the forward.
  set_flops(state, 3.5 * attention_flops(B, H, T, T, D, D, causal));
}
BENCHMARK(BM_FlashForwardBackward)
    ->ArgNames({"B", "H", "T", "D", "causal"})
    ->Args({1, 8, 1024, 64, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Block-sparse: sliding window 256 (causal) against dense causal at T = 16384.
void BM_SlidingWindow(benchmark::State& state) {
  const int64_t T = state.range(0), W = state.range(1);
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({1, 8, T, 64}), k = torch::randn({1, 8, T, 64}),
                v = torch::randn({1, 8, T, 64});
  auto o = FlexAttentionOptions().causal(true);
  if (W > 0) o.window_left(W);
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, o);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  const double visited =
      W > 0 ? static_cast<double>(T) * (W + 1) : static_cast<double>(T) * (T + 1) / 2;
  set_flops(state, 8.0 * visited * 64 * 4);
}
BENCHMARK(BM_SlidingWindow)
    ->ArgNames({"T", "window"})
    ->Args({16384, 256})
    ->Args({16384, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Collects the medians (or the single run) of every benchmark for the ratio table.
class MedianReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      const bool aggregate = run.run_type == Run::RT_Aggregate;
      if (aggregate && run.aggregate_name != "median") continue;
      const std::string name = run.run_name.str();
      for (const auto& [key, counter] : run.counters) values_[name][key] = counter.value;
      values_[name]["ms"] = run.GetAdjustedRealTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }
  double get(const std::string& name, const std::string& key) const {
    auto it = values_.find(name);
    if (it == values_.end()) return 0;
    auto jt = it->second.find(key);
    return jt == it->second.end() ? 0 : jt->second;
  }

 private:
  std::map<std::string, std::map<std::string, double>> values_;
};

void print_ratios(const MedianReporter& r) {
  const double sgemm = r.get("BM_Sgemm/N:2048/real_time", "FLOP/s");
  const double bw = r.get("BM_ReadBandwidth/real_time", "bytes/s");
  std::printf("\nsgemm %.1f GFLOP/s, read bandwidth %.1f GB/s, %d threads\n", sgemm / 1e9, bw / 1e9,
              torch::get_num_threads());
  std::printf("%-34s %10s %10s %12s %14s\n", "shape", "GFLOP/s", "/sgemm", "composed ms",
              "x composed");
  for (const char* shape : {"B:1/H:8/T:4096/D:128/causal:0", "B:1/H:8/T:4096/D:128/causal:1",
                            "B:1/H:8/T:2048/D:64/causal:0", "B:1/H:8/T:2048/D:64/causal:1"}) {
    const std::string s = shape;
    const double f = r.get("BM_FlashForward/" + s + "/real_time", "FLOP/s");
    const double t = r.get("BM_FlashForward/" + s + "/real_time", "ms");
    const double c = r.get("BM_Composed/" + s + "/real_time", "ms");
    if (f == 0) continue;
    std::printf("%-34s %10.1f %10.2f %12.1f %14.2f\n", shape, f / 1e9, sgemm > 0 ? f / sgemm : 0, c,
                t > 0 ? c / t : 0);
  }
  const double bf = r.get("BM_FlashForwardBf16/B:1/H:8/T:4096/D:128/causal:0/real_time", "FLOP/s");
  if (bf > 0)
    std::printf("bf16 non-causal T4096 D128: %.1f GFLOP/s (%.2f of sgemm)\n", bf / 1e9, bf / sgemm);
  const double dec = r.get("BM_Decode/Hq:32/Hkv:8/Tk:32768/D:128/real_time", "bytes/s");
  if (dec > 0)
    std::printf("decode Hq32 Hkv8 Tk32768 D128: %.1f GB/s (%.2f of read bandwidth)\n", dec / 1e9,
                bw > 0 ? dec / bw : 0);
  const double fb =
      r.get("BM_FlashForwardBackward/B:1/H:8/T:1024/D:64/causal:1/real_time", "FLOP/s");
  if (fb > 0)
    std::printf("fwd+bwd causal T1024 D64: %.1f GFLOP/s (%.3f of sgemm)\n", fb / 1e9, fb / sgemm);
  const double sw = r.get("BM_SlidingWindow/T:16384/window:256/real_time", "ms");
  const double dense = r.get("BM_SlidingWindow/T:16384/window:0/real_time", "ms");
  if (sw > 0 && dense > 0) {
    const double ideal = (16384.0 + 1) / 2 / 257.0;
    std::printf("window 256 vs dense causal at T16384: %.2fx faster (ideal %.1fx, %.2f of ideal)\n",
                dense / sw, ideal, dense / sw / ideal);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  torch::set_num_threads(cores);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  MedianReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_ratios(reporter);
  benchmark::Shutdown();
  return 0;
}
