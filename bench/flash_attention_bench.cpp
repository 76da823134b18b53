// Benchmarks of the fused flash attention against the machine's limits, measured in the same
// run (bench/machine_limits.h): the FMA peak (register-only vector FMAs, 1 thread and all
// threads) and sgemm (at::mm: the BLAS inside LibTorch, MKL in the pip wheel) for FLOP/s, a
// vectorised multi-threaded streaming read for bytes/s, and LibTorch's composed path (matmul,
// softmax, matmul). Ratios are computed from medians of repeats and printed after the Google
// Benchmark table, with what is known of the BLAS and its kernel.
//
//   build/bench/flash_attention_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true   (one command line)

#include "machine_limits.h"

#include <attnkit/attnkit.h>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>

namespace {

namespace ml = attnkit::machine_limits;
using attnkit::functional::FlexAttentionOptions;

// All cores unless ATTNKIT_BENCH_THREADS says otherwise (1 thread gives stable CPU times on a
// shared machine). main sets LibTorch's threads to this; the limits run on as many.
int bench_threads() {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("ATTNKIT_BENCH_THREADS")) threads = std::max(1, std::atoi(env));
  return std::max(1, threads);
}

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

// Resident-set figures of this process from /proc/self/status ("VmRSS", "VmHWM"), in bytes.
int64_t proc_status_bytes(const char* key) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  int64_t kb = 0;
  const size_t n = std::strlen(key);
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::strncmp(line, key, n) == 0 && line[n] == ':') kb = std::atoll(line + n + 1);
  }
  std::fclose(f);
  return kb * 1024;
}

// Peak extra memory of one fused forward at T = 16384 (B1 H8 D64): the rise of the process's
// high-water mark over its resident size with the inputs allocated. Registered first so that no
// earlier benchmark has raised the high-water mark. O(T^2) would be 8.6 GB of fp32 scores.
void BM_PeakMemory(benchmark::State& state) {
  const int64_t T = state.range(0);
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({1, 8, T, 64}), k = torch::randn({1, 8, T, 64}),
                v = torch::randn({1, 8, T, 64});
  const int64_t before = proc_status_bytes("VmRSS");
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, FlexAttentionOptions().causal(true));
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  state.counters["extra_bytes"] = static_cast<double>(proc_status_bytes("VmHWM") - before);
  state.counters["output_bytes"] = static_cast<double>(q.nbytes());
}
BENCHMARK(BM_PeakMemory)->ArgNames({"T"})->Arg(16384)->Iterations(1)->Unit(benchmark::kMillisecond);

// The machine's practical FLOP limit: sgemm of square fp32 matrices (at::mm: LibTorch's BLAS,
// with the kernel it picks for this CPU; see the BLAS lines of the summary).
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

// The machine's read bandwidth: vector loads (AVX-512 or AVX) summed into 8 accumulators per
// thread over 1 GiB split across all threads (std::threads: at::parallel_for would run on one
// thread here, this file being built without -fopenmp). The buffer is kept for the process.
void BM_ReadBandwidth(benchmark::State& state) {
  static ml::ReadBuffer* buffer = new ml::ReadBuffer(torch::get_num_threads());
  for (auto _ : state) buffer->pass_seconds();
  state.counters["bytes/s"] = benchmark::Counter(static_cast<double>(buffer->bytes()),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ReadBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();

// The machine's FLOP ceiling: independent vector FMAs on registers (AVX-512F if the CPU has it,
// else AVX2+FMA) on 1 thread and on all threads, 2 FLOP per lane.
void BM_FmaPeak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0)), width = ml::widest_fma_width();
  if (width == 0) {
    state.SkipWithError("no FMA on this CPU");
    return;
  }
  static const int64_t iters = ml::fma_iters_for(width, 0.05);
  for (auto _ : state) ml::fma_pass_seconds(width, threads, iters);
  set_flops(state, ml::fma_flops_per_iter(width) * static_cast<double>(iters) * threads);
}
BENCHMARK(BM_FmaPeak)
    ->ArgNames({"threads"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      b->Arg(1);
      if (bench_threads() > 1) b->Arg(bench_threads());
    })
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

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

// A user's causal mask written as a lambda, in five forms at B1 H8 D64: 0 the built-in causal
// flag; as mask_mod (evaluated on every element, no tile skipped) 1 through the template (body
// inlined into the kernel's row loop) and 2 through std::function (one type-erased call per
// element); as a block mask built from it (evaluated on diagonal tiles only) 3 template and
// 4 std::function.
void BM_MaskFunctor(benchmark::State& state) {
  const int64_t T = state.range(0), form = state.range(1);
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({1, 8, T, 64}), k = torch::randn({1, 8, T, 64}),
                v = torch::randn({1, 8, T, 64});
  auto causal = [](int64_t, int64_t, int64_t q_idx, int64_t kv_idx) { return kv_idx <= q_idx; };
  const attnkit::functional::Mask mask =
      form % 2 == 1 ? attnkit::functional::mask_fn(causal)
                    : attnkit::functional::Mask(attnkit::functional::MaskMod(causal));
  FlexAttentionOptions o;
  if (form == 0) o.causal(true);
  if (form == 1 || form == 2) o.mask_mod(mask);
  if (form >= 3) o.block_mask(attnkit::functional::create_block_mask(mask, 1, 1, T, T));
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, o);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  set_flops(state, attention_flops(1, 8, T, T, 64, 64, /*causal=*/true));
}
BENCHMARK(BM_MaskFunctor)
    ->ArgNames({"T", "form"})
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->Args({4096, 2})
    ->Args({4096, 3})
    ->Args({4096, 4})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Gather: each of T queries attends to 256 keys (8 query heads sharing 1 kv head, D 64),
// against the same selection as a dense boolean mask on the fused dense kernel.
torch::Tensor gather_indices(int64_t T, int64_t K) {
  // key (31 n + 37 i) mod T: K distinct keys per query (31 is coprime with T = 2^13)
  torch::Tensor i = torch::arange(T).view({T, 1}), n = torch::arange(K).view({1, K});
  return ((n * 31 + i * 37) % T).view({1, 1, T, K});
}

void BM_Gather(benchmark::State& state) {
  const int64_t T = state.range(0), K = state.range(1);
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({1, 8, T, 64}), k = torch::randn({1, 1, T, 64}),
                v = torch::randn({1, 1, T, 64});
  torch::Tensor idx = gather_indices(T, K);
  for (auto _ : state) {
    auto r = attnkit::functional::gather_attention(q, k, v, idx);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  set_flops(state, 8.0 * T * K * 64 * 4);
}
BENCHMARK(BM_Gather)
    ->ArgNames({"T", "K"})
    ->Args({8192, 256})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_GatherAsDenseMask(benchmark::State& state) {
  const int64_t T = state.range(0), K = state.range(1);
  torch::NoGradGuard no_grad;
  torch::Tensor q = torch::randn({1, 8, T, 64}), k = torch::randn({1, 1, T, 64}),
                v = torch::randn({1, 1, T, 64});
  torch::Tensor mask = torch::zeros({1, 1, T, T}, torch::kBool);
  mask.scatter_(3, gather_indices(T, K), true);
  auto o = FlexAttentionOptions().mask(mask);
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, o);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
  set_flops(state, 8.0 * T * K * 64 * 4);
}
BENCHMARK(BM_GatherAsDenseMask)
    ->ArgNames({"T", "K"})
    ->Args({8192, 256})
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

// The limits from this run's medians; a limit whose benchmark was filtered out is measured here.
ml::Limits limits_of(const MedianReporter& r) {
  ml::Limits l;
  l.threads = torch::get_num_threads();
  l.fma_width = ml::widest_fma_width();
  l.sgemm = r.get("BM_Sgemm/N:2048/real_time", "FLOP/s");
  l.read = r.get("BM_ReadBandwidth/real_time", "bytes/s");
  l.fma_peak_1 = r.get("BM_FmaPeak/threads:1/real_time", "FLOP/s");
  l.fma_peak =
      r.get("BM_FmaPeak/threads:" + std::to_string(l.threads) + "/real_time", "FLOP/s");
  if (l.threads == 1) l.fma_peak = l.fma_peak_1;
  if (l.sgemm == 0) l.sgemm = ml::sgemm_flops();
  if (l.read == 0) l.read = ml::read_bandwidth(l.threads);
  if (l.fma_peak_1 == 0) l.fma_peak_1 = ml::fma_peak_flops(l.fma_width, 1);
  if (l.fma_peak == 0) l.fma_peak = ml::fma_peak_flops(l.fma_width, l.threads);
  return l;
}

void print_ratios(const MedianReporter& r) {
  const ml::Limits limits = limits_of(r);
  const double sgemm = limits.sgemm, fma_peak = limits.fma_peak;
  std::printf("\nmachine limits (this run, %d threads):\n%s%s", limits.threads,
              ml::describe(limits).c_str(), ml::describe_blas(limits).c_str());
  std::printf("%-34s %10s %10s %10s %12s %14s\n", "shape", "GFLOP/s", "/sgemm", "/FMA peak",
              "composed ms", "x composed");
  for (const char* shape : {"B:1/H:8/T:4096/D:128/causal:0", "B:1/H:8/T:4096/D:128/causal:1",
                            "B:1/H:8/T:2048/D:64/causal:0", "B:1/H:8/T:2048/D:64/causal:1"}) {
    const std::string s = shape;
    const double f = r.get("BM_FlashForward/" + s + "/real_time", "FLOP/s");
    const double t = r.get("BM_FlashForward/" + s + "/real_time", "ms");
    const double c = r.get("BM_Composed/" + s + "/real_time", "ms");
    if (f == 0) continue;
    std::printf("%-34s %10.1f %10.2f %10.2f %12.1f %14.2f\n", shape, f / 1e9,
                sgemm > 0 ? f / sgemm : 0, fma_peak > 0 ? f / fma_peak : 0, c, t > 0 ? c / t : 0);
  }
  const double bf = r.get("BM_FlashForwardBf16/B:1/H:8/T:4096/D:128/causal:0/real_time", "FLOP/s");
  if (bf > 0) {
    std::printf("bf16 non-causal T4096 D128: %.1f GFLOP/s %s\n", bf / 1e9,
                ml::flop_ratios(bf, limits).c_str());
  }
  const double dec = r.get("BM_Decode/Hq:32/Hkv:8/Tk:32768/D:128/real_time", "bytes/s");
  if (dec > 0) {
    std::printf("decode Hq32 Hkv8 Tk32768 D128: %.1f GB/s %s\n", dec / 1e9,
                ml::read_ratio(dec, limits).c_str());
  }
  const double fb =
      r.get("BM_FlashForwardBackward/B:1/H:8/T:1024/D:64/causal:1/real_time", "FLOP/s");
  if (fb > 0) {
    std::printf("fwd+bwd causal T1024 D64: %.1f GFLOP/s %s\n", fb / 1e9,
                ml::flop_ratios(fb, limits).c_str());
  }
  const double ga = r.get("BM_Gather/T:8192/K:256/real_time", "ms");
  const double gd = r.get("BM_GatherAsDenseMask/T:8192/K:256/real_time", "ms");
  if (ga > 0 && gd > 0) {
    std::printf("gather T8192 K256: %.1f ms vs %.1f ms as a dense mask: %.1fx faster\n", ga, gd,
                gd / ga);
  }
  const double gf = r.get("BM_Gather/T:8192/K:256/real_time", "FLOP/s");
  if (gf > 0) {
    std::printf("gather T8192 K256: %.1f GFLOP/s %s\n", gf / 1e9,
                ml::flop_ratios(gf, limits).c_str());
  }
  const double peak = r.get("BM_PeakMemory/T:16384/iterations:1", "extra_bytes");
  if (peak > 0) {
    std::printf(
        "peak extra memory of the fused forward at T16384 (B1 H8 D64): %.1f MB (output "
        "%.1f MB; dense scores would be %.1f MB)\n",
        peak / 1e6, r.get("BM_PeakMemory/T:16384/iterations:1", "output_bytes") / 1e6,
        16384.0 * 16384 * 8 * 4 / 1e6);
  }
  auto functor_ms = [&](int form) {
    return r.get("BM_MaskFunctor/T:4096/form:" + std::to_string(form) + "/real_time", "ms");
  };
  if (functor_ms(0) > 0 && functor_ms(1) > 0 && functor_ms(2) > 0) {
    std::printf(
        "causal lambda mask T4096 D64, mask_mod on every element: template %.1f ms, "
        "std::function %.1f ms (%.2fx slower)\n",
        functor_ms(1), functor_ms(2), functor_ms(2) / functor_ms(1));
    std::printf(
        "  as a block mask: template %.1f ms, std::function %.1f ms; built-in causal flag "
        "%.1f ms (template %.2fx of built-in)\n",
        functor_ms(3), functor_ms(4), functor_ms(0), functor_ms(3) / functor_ms(0));
  }
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
  torch::set_num_threads(bench_threads());
  // Recycle freed blocks instead of returning them to the OS: glibc hands out blocks over 32 MB
  // as fresh mmaps, so every iteration's output (33 MB at T16384, H8, D64) would be faulted in
  // and zeroed by the kernel (14% of the sliding-window case), as no serving process with a
  // caching allocator pays. ATTNKIT_BENCH_FRESH_PAGES=1 keeps glibc's default.
  if (std::getenv("ATTNKIT_BENCH_FRESH_PAGES") == nullptr) {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  MedianReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_ratios(reporter);
  benchmark::Shutdown();
  return 0;
}
