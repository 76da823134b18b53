// Gated DeltaNet's fused chunked kernel and causal linear attention against dense fused causal
// attention, B=1, 8 heads, head dim 64, fp32, 2 threads, T = 1K ... 32K; and the per-token
// decode cost of the GatedDeltaNet module after a 1K and a 32K prefill. Times are medians of
// repeats; the derived table (time per token, analytic memory, crossover) is printed after the
// Google Benchmark table, followed by the machine's limits measured in the same process
// (bench/machine_limits.h: FMA peak, streaming read, sgemm, the BLAS) and dense fused causal's
// GFLOP/s against them.
//
//   build/bench/linear_attention_bench --benchmark_repetitions=3
//       --benchmark_report_aggregates_only=true   (one command line)
//
// Dense causal attention is not run at T = 32K (about 4x the 16K time, tens of seconds per
// repeat on 2 cores); the table extrapolates it as 4x the 16K median and marks it "~". The
// whole run takes about 4 minutes on the loaded 2-core machine, most of it linear attention
// and dense causal at 16K/32K (--benchmark_filter=GatedDelta|GdnDecode for a quick run).

#include "machine_limits.h"

#include <attnkit/attnkit.h>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace {

namespace ml = attnkit::machine_limits;
using attnkit::functional::FlexAttentionOptions;

constexpr int64_t kHeads = 8;
constexpr int64_t kHeadDim = 64;
constexpr int64_t kChunk = 64;
const std::vector<int64_t> kLengths = {1024, 2048, 4096, 8192, 16384, 32768};

torch::Tensor l2norm(const torch::Tensor& x) {
  return x / torch::sqrt(x.pow(2).sum(-1, /*keepdim=*/true) + 1e-6);
}

// (a) The gated delta rule, fused chunked kernel (gated_delta_rule with grad off).
void BM_GatedDeltaRule(benchmark::State& state) {
  const int64_t T = state.range(0);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  torch::Tensor q = l2norm(torch::randn({1, kHeads, T, kHeadDim}));
  torch::Tensor k = l2norm(torch::randn({1, kHeads, T, kHeadDim}));
  torch::Tensor v = torch::randn({1, kHeads, T, kHeadDim});
  torch::Tensor g = torch::log_sigmoid(torch::randn({1, kHeads, T})) / 16.0;
  torch::Tensor beta = torch::sigmoid(torch::randn({1, kHeads, T}));
  for (auto _ : state) {
    auto r = attnkit::gated_delta_rule(q, k, v, g, beta);
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
}

// (b) The core of causal LinearAttention (src/attention/linear_attention.cpp, causal branch,
// no projections): elu+1 features, chunked prefix sums with chunk 64 from a running (S, z).
torch::Tensor causal_linear_attention(const torch::Tensor& q_in,
                                      const torch::Tensor& k_in,
                                      const torch::Tensor& v) {
  const double eps = 1e-6;
  torch::Tensor q = torch::elu(q_in) + 1.0, k = torch::elu(k_in) + 1.0;
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), F = q.size(3), Dv = v.size(3);
  torch::Tensor S = torch::zeros({B, H, F, Dv}, q.options());
  torch::Tensor z = torch::zeros({B, H, F}, q.options());
  std::vector<torch::Tensor> chunks;
  for (int64_t t0 = 0; t0 < T; t0 += kChunk) {
    const int64_t len = std::min(kChunk, T - t0);
    torch::Tensor qc = q.narrow(2, t0, len), kc = k.narrow(2, t0, len), vc = v.narrow(2, t0, len);
    torch::Tensor a = torch::matmul(qc, kc.transpose(-1, -2)).tril();
    torch::Tensor num = torch::matmul(qc, S) + torch::matmul(a, vc);
    torch::Tensor den = torch::matmul(qc, z.unsqueeze(-1)) + a.sum(-1, /*keepdim=*/true);
    chunks.push_back(num / (den + eps));
    S = S + torch::matmul(kc.transpose(-1, -2), vc);
    z = z + kc.sum(2);
  }
  return torch::cat(chunks, 2);
}

void BM_LinearAttention(benchmark::State& state) {
  const int64_t T = state.range(0);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  torch::Tensor q = torch::randn({1, kHeads, T, kHeadDim});
  torch::Tensor k = torch::randn({1, kHeads, T, kHeadDim});
  torch::Tensor v = torch::randn({1, kHeads, T, kHeadDim});
  for (auto _ : state) {
    torch::Tensor o = causal_linear_attention(q, k, v);
    benchmark::DoNotOptimize(o.data_ptr());
  }
}

// (c) Dense fused causal attention (the flash engine through flex_attention).
void BM_DenseCausal(benchmark::State& state) {
  const int64_t T = state.range(0);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  torch::Tensor q = torch::randn({1, kHeads, T, kHeadDim});
  torch::Tensor k = torch::randn({1, kHeads, T, kHeadDim});
  torch::Tensor v = torch::randn({1, kHeads, T, kHeadDim});
  for (auto _ : state) {
    auto r = attnkit::functional::flex_attention(q, k, v, FlexAttentionOptions().causal(true));
    benchmark::DoNotOptimize(r.output.data_ptr());
  }
}

// Decode: one token through the GatedDeltaNet module (dim 512, 8 qk and 8 v heads of 64) after
// a prefill of T tokens with the chunked path. The state is constant-size, so the cost per token
// should not depend on T.
void BM_GdnDecode(benchmark::State& state) {
  const int64_t T = state.range(0);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  attnkit::GatedDeltaNet gdn(attnkit::GatedDeltaNetOptions(512, kHeads, kHeads));
  gdn->eval();
  attnkit::DecodeState st = gdn->init_state(1);
  gdn->forward(torch::randn({1, T, 512}), st);  // prefill (chunked)
  torch::Tensor x = torch::randn({1, 1, 512});
  for (auto _ : state) {
    torch::Tensor y = gdn->forward(x, st);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.counters["state_bytes"] = static_cast<double>(st.bytes());
}

void register_all() {
  for (int64_t T : kLengths) {
    benchmark::RegisterBenchmark("BM_GatedDeltaRule", BM_GatedDeltaRule)
        ->ArgNames({"T"})
        ->Arg(T)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (int64_t T : kLengths) {
    benchmark::RegisterBenchmark("BM_LinearAttention", BM_LinearAttention)
        ->ArgNames({"T"})
        ->Arg(T)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (int64_t T : kLengths) {
    if (T > 16384) continue;  // skipped: see the header comment
    benchmark::RegisterBenchmark("BM_DenseCausal", BM_DenseCausal)
        ->ArgNames({"T"})
        ->Arg(T)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (int64_t T : {1024, 32768}) {
    benchmark::RegisterBenchmark("BM_GdnDecode", BM_GdnDecode)
        ->ArgNames({"T"})
        ->Arg(T)
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
  }
}

// Collects the medians (or the single run) of every benchmark for the derived table.
class MedianReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      const bool aggregate = run.run_type == Run::RT_Aggregate;
      if (aggregate && run.aggregate_name != "median") continue;
      const std::string name = run.run_name.str();
      for (const auto& [key, counter] : run.counters) values_[name][key] = counter.value;
      values_[name]["time"] = run.GetAdjustedRealTime();
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

double ms(const MedianReporter& r, const std::string& bench, int64_t T) {
  return r.get(bench + "/T:" + std::to_string(T) + "/real_time", "time");
}

void print_table(const MedianReporter& r) {
  const double H = kHeads, D = kHeadDim, f = 4;  // fp32
  std::printf("\nB1 H8 D64 fp32, %d threads; ms are medians; us/tok = time / T\n",
              torch::get_num_threads());
  std::printf("%6s %9s %7s %9s %7s %10s %7s %9s %10s %10s\n", "T", "GDN ms", "us/tok", "LinAt ms",
              "us/tok", "dense ms", "us/tok", "dense/GDN", "GDN state", "dense KV");
  double prev_dense = 0;
  int64_t crossover = 0;
  bool gdn_wins_after = true;
  for (auto it = kLengths.rbegin(); it != kLengths.rend(); ++it) {
    const int64_t T = *it;
    double dense = ms(r, "BM_DenseCausal", T);
    if (dense == 0 && T == 32768) dense = 4 * ms(r, "BM_DenseCausal", 16384);
    const double gdn = ms(r, "BM_GatedDeltaRule", T);
    if (gdn > 0 && dense > 0 && gdn < dense && gdn_wins_after) crossover = T;
    if (gdn >= dense) gdn_wins_after = false;
  }
  for (int64_t T : kLengths) {
    const double gdn = ms(r, "BM_GatedDeltaRule", T), lin = ms(r, "BM_LinearAttention", T);
    double dense = ms(r, "BM_DenseCausal", T);
    const bool extrapolated = dense == 0 && T == 32768;
    if (extrapolated) dense = 4 * prev_dense;
    prev_dense = dense;
    // Analytic memory: GDN carries one dk x dv state per head whatever T; dense decoding would
    // hold K and V for all T tokens (the fused forward itself is O(T D), no T x T scores).
    const double gdn_state = H * D * D * f;
    const double kv = 2 * H * T * D * f;
    std::printf("%6lld %9.2f %7.2f %9.2f %7.2f %s%9.2f %7.2f %9.2f %8.0fKB %8.1fMB\n",
                static_cast<long long>(T), gdn, 1e3 * gdn / T, lin, 1e3 * lin / T,
                extrapolated ? "~" : " ", dense, 1e3 * dense / T, gdn > 0 ? dense / gdn : 0,
                gdn_state / 1e3, kv / 1e6);
  }
  if (crossover > 0) {
    std::printf("crossover: GDN's chunked kernel is faster than dense fused causal from T = %lld\n",
                static_cast<long long>(crossover));
  } else {
    std::printf("crossover: none in the measured range\n");
  }
  std::printf(
      "memory per forward (analytic, bytes): inputs q,k,v 3*H*T*D*4 and output H*T*D*4 for all "
      "three; GDN adds g, beta (2*H*T*4) and a %.0f KB state; linear attention a (S, z) state "
      "of %.0f KB plus one 64x64 chunk matrix per head; dense fused keeps no T x T scores "
      "(those would be %.1f GB at T = 32K).\n",
      H * D * D * f / 1e3, (H * D * D + H * D) * f / 1e3, H * 32768.0 * 32768 * f / 1e9);
  const double d1 = r.get("BM_GdnDecode/T:1024/real_time", "time");
  const double d32 = r.get("BM_GdnDecode/T:32768/real_time", "time");
  if (d1 > 0 && d32 > 0) {
    std::printf(
        "GatedDeltaNet decode (dim 512): %.1f us/token after 1K, %.1f us/token after 32K "
        "(ratio %.2f); state %.0f KB at both\n",
        d1, d32, d32 / d1, r.get("BM_GdnDecode/T:1024/real_time", "state_bytes") / 1e3);
  }
  // Dense fused causal against the machine (QK^T and PV, causal half counted). GDN's and linear
  // attention's chunked work has no FLOP count comparable to it, so they get no FLOP ratio.
  const ml::Limits limits = ml::measure();
  std::printf("\nmachine limits (this process, %d threads):\n%s%s", limits.threads,
              ml::describe(limits).c_str(), ml::describe_blas(limits).c_str());
  for (int64_t T : kLengths) {
    const double dense = ms(r, "BM_DenseCausal", T);
    if (dense <= 0) continue;
    const double flops = 4.0 * H * static_cast<double>(T) * static_cast<double>(T) * D / 2;
    const double rate = flops / (dense * 1e-3);
    std::printf("dense fused causal T%lld: %.1f GFLOP/s %s\n", static_cast<long long>(T),
                rate / 1e9, ml::flop_ratios(rate, limits).c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(2);
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  MedianReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_table(reporter);
  benchmark::Shutdown();
  return 0;
}
