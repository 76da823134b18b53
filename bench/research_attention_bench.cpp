// Research attention (sparse::ResearchAttention) at decode shapes: the fused path (masks kept as
// row lists, attention on the gather kernel) against the dense reference path
// (ATTNKIT_BACKEND=reference: masked attention over dense [B, H, Tq, Tk] scores, upstream's
// algorithm), and against dense flash attention with no mask (what attention costs without
// sparsity). Llama-8B-like heads: B = 1, 32 query heads, 8 kv heads, head_dim 128, fp32,
// 2 threads, Tk = 16K, Tq = 1 (one decode step) and Tq = 64 (a speculative / chunked step).
//
// Configurations (density about 0.1):
//   topk:     sink 64 + local 64 + oracle top-k 0.09
//   magicpig: sink 64 + local 64 + MagicPig (lsh_l 32, lsh_k 8; its key signatures are cached
//             per layer, as in decoding, after a first call)
//
// Each case runs in a child process (this binary with --case) so that its peak memory is its
// own: "peak MB" is the peak resident size during the timed calls (VmHWM, reset first) minus
// the resident size before them. "mask s" is building the mask, "attn s" the attention under
// it, "total s" both (custom_attention); medians of --reps.
//
//   build/bench/research_attention_bench [--tk 16384] [--reps 5]

#include <attnkit/sparse/research_attention.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

using namespace attnkit::sparse;  // NOLINT

constexpr int64_t kHeads = 32, kKvHeads = 8, kHeadDim = 128;

const char* config_json(const std::string& name) {
  if (name == "topk") {
    return R"([{"type":"sink","sink_size":64},{"type":"local","window_size":64},
               {"type":"oracle_top_k","heavy_size":0.09}])";
  }
  return R"([{"type":"sink","sink_size":64},{"type":"local","window_size":64},
             {"type":"magic_pig","lsh_l":32,"lsh_k":8}])";
}

double status_mb(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(status, line)) {
    if (line.compare(0, n, field) == 0) return std::atof(line.c_str() + n + 1) / 1024.0;
  }
  return 0.0;
}

double median_seconds(const std::function<void()>& fn, int reps) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Child: "<config>:<Tq>:<backend>" with backend fused, reference or flash (dense, no mask).
// Prints "total mask attn peak density".
int run_case(const std::string& spec, int64_t Tk, int reps) {
  const size_t a = spec.find(':'), b = spec.rfind(':');
  const std::string config = spec.substr(0, a), backend = spec.substr(b + 1);
  const int64_t Tq = std::atoll(spec.substr(a + 1, b - a - 1).c_str());
  setenv("ATTNKIT_BACKEND", backend == "reference" ? "reference" : "fused", 1);
  torch::set_num_threads(2);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  auto q = torch::randn({1, kHeads, Tq, kHeadDim});
  auto k = torch::randn({1, kKvHeads, Tk, kHeadDim});
  auto v = torch::randn({1, kKvHeads, Tk, kHeadDim});
  const double scaling = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  auto ra = ResearchAttention::from_json(config_json(config));
  MaskerState state;
  Mask mask = ra.build_mask(q, k, v, {}, scaling, 0.0, state, 0);  // warms the layer caches
  if (backend == "flash") dense_attention(q, k, v, {}, scaling);
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";  // resets VmHWM to the current resident size
  }
  const double base = status_mb("VmRSS");
  double total = 0, mask_s = 0, attn_s = 0;
  if (backend == "flash") {
    total = attn_s = median_seconds([&] { dense_attention(q, k, v, {}, scaling); }, reps);
  } else {
    total = median_seconds(
        [&] { ra.custom_attention(q, k, v, {}, scaling, 0.0, state, 0); }, reps);
    mask_s = median_seconds([&] { mask = ra.build_mask(q, k, v, {}, scaling, 0.0, state, 0); },
                            reps);
    attn_s = median_seconds([&] { masked_attention(q, k, v, mask, {}, scaling); }, reps);
  }
  std::printf("%.6f %.6f %.6f %.1f %.4f\n", total, mask_s, attn_s, status_mb("VmHWM") - base,
              backend == "flash" ? 1.0 : mask.density());
  return 0;
}

struct Result {
  double total = 0, mask = 0, attn = 0, peak = 0, density = 0;
};

Result measure(const char* self, const std::string& spec, int64_t Tk, int reps) {
  const std::string cmd = std::string(self) + " --case " + spec + " --tk " +
                          std::to_string(Tk) + " --reps " + std::to_string(reps);
  Result r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr ||
      std::fscanf(pipe, "%lf %lf %lf %lf %lf", &r.total, &r.mask, &r.attn, &r.peak,
                  &r.density) != 5) {
    std::fprintf(stderr, "case %s failed\n", spec.c_str());
    std::exit(1);
  }
  pclose(pipe);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t Tk = 16384;
  int reps = 5;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--tk") == 0) Tk = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--case") == 0) only = argv[i + 1];
  }
  if (!only.empty()) return run_case(only, Tk, reps);

  std::printf("B=1 H=%lld Hkv=%lld D=%lld Tk=%lld fp32, 2 threads, median of %d\n",
              static_cast<long long>(kHeads), static_cast<long long>(kKvHeads),
              static_cast<long long>(kHeadDim), static_cast<long long>(Tk), reps);
  std::printf("| config | Tq | density | fused total s | fused mask s | fused attn s | "
              "fused MB | ref total s | ref attn s | ref MB | attn ref/fused | "
              "total ref/fused | MB ref/fused | flash s | flash MB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t Tq : {1, 64}) {
    const std::string tq = std::to_string(Tq);
    const Result flash = measure(argv[0], "topk:" + tq + ":flash", Tk, reps);
    for (const char* config : {"topk", "magicpig"}) {
      const std::string base = std::string(config) + ":" + tq + ":";
      const Result f = measure(argv[0], base + "fused", Tk, reps);
      const Result r = measure(argv[0], base + "reference", Tk, reps);
      std::printf("| %s | %lld | %.3f | %.4f | %.4f | %.4f | %.0f | %.4f | %.4f | %.0f | %.1fx | "
                  "%.1fx | %.1fx | %.4f | %.0f |\n",
                  config, static_cast<long long>(Tq), f.density, f.total, f.mask, f.attn, f.peak,
                  r.total, r.attn, r.peak, r.attn / f.attn, r.total / f.total,
                  r.peak / std::max(f.peak, 1.0), flash.total, flash.peak);
      std::fflush(stdout);
    }
  }
  return 0;
}
