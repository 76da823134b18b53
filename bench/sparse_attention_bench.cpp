// Forward time (no grad) and peak extra memory of the sparse attention modules on the fused path
// (fused indexer top-k + gather kernel) against dense fused causal attention of the same shape
// and against the masked dense reference path (ATTNKIT_BACKEND=reference). B = 1, dim 1024,
// 8 heads of 128, fp32, 2 threads, medians of repeats.
//
// Every measurement runs in a child process (this binary with --case), so that its peak
// resident memory is its own: "peak MB" is the peak RSS during the forward minus the RSS
// before it. "attn s" is the module time minus the time of its projections alone (measured
// the same way), i.e. the time of what the FLOP ratio counts: attention (+ indexer).
// "ideal" is dense attention FLOPs over sparse attention plus indexer FLOPs, causal halves
// counted for both; the target is dense attn / sparse attn >= ideal / 2. CSA's row compares
// whole module times (its projections are not separated).
//
// The parent first measures the machine's limits on the same 2 threads (bench/machine_limits.h:
// FMA peak, streaming read, sgemm, the BLAS); dense attention's GFLOP/s (attn s) and, with
// --kernels, the gather kernels' GFLOP/s are stated against them.
//
//   build/bench/sparse_attention_bench [--seqs 4096,16384,32768] [--reps 3] [--ref-max 4096]
//   build/bench/sparse_attention_bench --kernels 16384 --reps 5   # index_topk, gather alone
//                                                                 (forward; fwd+bwd vs dense)

#include "machine_limits.h"

#include <attnkit/attnkit.h>

#include <torch/torch.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

namespace ml = attnkit::machine_limits;

constexpr int64_t kDim = 1024, kHeads = 8, kHeadDim = kDim / kHeads, kGroups = 2;

// ---- child: one case, one sequence length

double resident_mb() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * 4096.0 / (1 << 20);
}

double peak_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

torch::Tensor linear(torch::nn::Linear l, const torch::Tensor& x) { return l->forward(x); }

// The module forward of `name` and, as `proj`, the forward of its projections alone.
void make_case(const std::string& name,
               std::function<void(const torch::Tensor&)>& forward,
               std::function<void(const torch::Tensor&)>& proj) {
  using namespace attnkit;  // NOLINT
  if (name == "dense_mha" || name == "dense_gqa2") {
    GroupedQueryAttention m(
        GroupedQueryAttentionOptions(kDim, kHeads, name == "dense_mha" ? kHeads : kGroups)
            .causal(true));
    forward = [m](const torch::Tensor& x) mutable { m->forward(x); };
    proj = [m](const torch::Tensor& x) mutable {
      linear(m->q_proj, x), linear(m->k_proj, x), linear(m->v_proj, x);
      linear(m->o_proj, x);
    };
  } else if (name.rfind("dsa_top", 0) == 0) {
    DeepSeekSparseAttention m(
        DeepSeekSparseAttentionOptions(kDim, kHeads).top_k(std::atoll(name.c_str() + 7)));
    forward = [m](const torch::Tensor& x) mutable { m->forward(x); };
    proj = [m](const torch::Tensor& x) mutable {
      linear(m->qkv, x), linear(m->proj, x);
      linear(m->indexer->wq, x), linear(m->indexer->wk, x), linear(m->indexer->ww, x);
    };
  } else if (name == "minimax") {
    MiniMaxSparseAttention m(MiniMaxSparseAttentionOptions(kDim, kHeads, kGroups));
    forward = [m](const torch::Tensor& x) mutable { m->forward(x); };
    proj = [m](const torch::Tensor& x) mutable {
      linear(m->q, x), linear(m->k, x), linear(m->v, x), linear(m->proj, x);
      linear(m->idx_q, x), linear(m->idx_k, x);
    };
  } else if (name == "csa") {
    // Projections not separated (low-rank q, compressor, grouped output): module time only.
    CompressedSparseAttention m(CompressedSparseAttentionOptions(kDim, kHeads));
    forward = [m](const torch::Tensor& x) mutable { m->forward(x); };
  } else {
    std::fprintf(stderr, "unknown case %s\n", name.c_str());
    std::exit(2);
  }
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

// Prints "<module s> <projection s> <peak extra MB>".
int run_child(const std::string& name, int64_t T, int reps) {
  torch::set_num_threads(2);
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  std::function<void(const torch::Tensor&)> forward, proj;
  make_case(name, forward, proj);
  torch::Tensor x = torch::randn({1, T, kDim});
  const double before = resident_mb();
  forward(x);  // warm-up and the peak-memory run
  const double extra = peak_mb() - before;
  const double module = median_seconds([&] { forward(x); }, reps);
  const double projections = proj ? median_seconds([&] { proj(x); }, reps) : -1.0;
  std::printf("%.6f %.6f %.1f\n", module, projections, extra);
  return 0;
}

// ---- parent: the table

struct Measure {
  double module = 0, proj = 0, peak = 0;
  // Without a projection time (proj < 0) the module time stands in.
  double attn() const { return proj < 0 ? module : std::max(1e-9, module - proj); }
};

Measure measure(const char* self, const std::string& name, int64_t T, int reps, bool reference) {
  std::string cmd = std::string(reference ? "ATTNKIT_BACKEND=reference " : "") + self + " --case " +
                    name + " --seq " + std::to_string(T) + " --reps " + std::to_string(reps);
  Measure m;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr || std::fscanf(pipe, "%lf %lf %lf", &m.module, &m.proj, &m.peak) != 3) {
    std::fprintf(stderr, "failed: %s\n", cmd.c_str());
    std::exit(1);
  }
  pclose(pipe);
  return m;
}

// Causal attention FLOPs (QK^T and PV) of all heads when query t sees keys(t) keys.
double attention_flops(int64_t T, const std::function<double(int64_t)>& keys) {
  double sum = 0;
  for (int64_t t = 0; t < T; ++t) sum += keys(t);
  return 4.0 * kHeads * kHeadDim * sum;
}

// ---- --kernels T: index_topk and gather_attention alone, on random inputs of the cases' shapes

// Causal top-k lists [1, 1, T, K] (ascending, -1 = unused) of random scores.
torch::Tensor random_causal_lists(int64_t T, int64_t K) {
  torch::Tensor scores =
      torch::rand({T, T}).masked_fill(torch::ones({T, T}, torch::kBool).triu(1), -1.0);
  torch::Tensor idx = std::get<1>(scores.topk(K, -1));
  idx = idx.masked_fill(scores.gather(1, idx) < 0, -1);
  return std::get<0>(idx.sort(-1)).view({1, 1, T, K}).contiguous();
}

int run_kernels(int64_t T, int reps) {
  using namespace attnkit::functional;  // NOLINT
  torch::set_num_threads(2);
  const ml::Limits limits = ml::measure();
  std::printf("machine limits (this process, 2 threads):\n%s%s", ml::describe(limits).c_str(),
              ml::describe_blas(limits).c_str());
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  std::printf("T=%lld, 2 threads, medians of %d\n", static_cast<long long>(T), reps);
  {  // DeepSeek's indexer: 4 heads of 64, relu, causal
    torch::Tensor q = torch::randn({1, 1, T, 4, 64}), k = torch::randn({1, T, 64});
    torch::Tensor w = torch::randn({1, 1, T, 4});
    for (int64_t top_k : {64, 256, 2048}) {
      const double s = median_seconds(
          [&] { index_topk(q, k, w, IndexTopkOptions().top_k(top_k).causal(true).relu(true)); },
          reps);
      std::printf("index_topk top %-5lld %8.3f s\n", static_cast<long long>(top_k), s);
    }
  }
  torch::Tensor q = torch::randn({1, kHeads, T, kHeadDim});
  {  // DeepSeek's attention: 8 heads of 128, one list per query shared by the heads
    torch::Tensor k = torch::randn({1, kHeads, T, kHeadDim}), v = torch::randn_like(k);
    for (int64_t top_k : {64, 256, 2048}) {
      torch::Tensor idx = random_causal_lists(T, top_k);
      const double s = median_seconds([&] { gather_attention(q, k, v, idx); }, reps);
      const double flops =
          attention_flops(T, [&](int64_t t) { return std::min<double>(t + 1, top_k); });
      std::printf("gather top %-5lld     %8.3f s  %6.1f GFLOP/s %s\n",
                  static_cast<long long>(top_k), s, flops / s / 1e9,
                  ml::flop_ratios(flops / s, limits).c_str());
    }
  }
  {  // Training step of DeepSeek's attention: forward + backward, against dense causal attention
    torch::Tensor k = torch::randn({1, kHeads, T, kHeadDim}), v = torch::randn_like(k);
    torch::Tensor qg = q.clone().requires_grad_(true);
    torch::Tensor kg = k.requires_grad_(true), vg = v.requires_grad_(true);
    torch::Tensor dout = torch::randn_like(q);
    torch::AutoGradMode grad(true);  // inside the function's NoGradGuard
    const double dense = median_seconds(
        [&] {
          dot_product_attention(qg, kg, vg, attnkit::DotProductAttentionOptions().causal(true))
              .output.backward(dout);
        },
        reps);
    std::printf("dense causal fwd+bwd   %8.3f s\n", dense);
    for (int64_t top_k : {256, 2048}) {
      torch::Tensor idx = random_causal_lists(T, top_k);
      const double s =
          median_seconds([&] { gather_attention(qg, kg, vg, idx).output.backward(dout); }, reps);
      std::printf("gather top %-5lld fwd+bwd %7.3f s  dense/gather %5.2f\n",
                  static_cast<long long>(top_k), s, dense / s);
    }
  }
  {  // MiniMax's attention: 2 kv groups, 16 random visible blocks of 128 + the current block
    const int64_t bs = 128, nb = (T + bs - 1) / bs;
    torch::Tensor k = torch::randn({1, kGroups, T, kHeadDim}), v = torch::randn_like(k);
    torch::Tensor pos = torch::arange(T).div(bs, "floor").view({T, 1});
    torch::Tensor scores =
        torch::rand({kGroups, T, nb})
            .masked_fill(torch::arange(nb).view({1, nb}).gt(pos).unsqueeze(0), -1.0);
    torch::Tensor blocks = std::get<1>(scores.topk(std::min<int64_t>(16, nb), -1));
    blocks = blocks.masked_fill(scores.gather(2, blocks) < 0, -1);
    torch::Tensor current = pos.expand({kGroups, T, 1});
    blocks = torch::cat({blocks, current.masked_fill((blocks == current).any(-1, true), -1)}, -1)
                 .unsqueeze(0)
                 .contiguous();
    auto opts = GatherAttentionOptions().block_size(bs).causal(true);
    const double s = median_seconds([&] { gather_attention(q, k, v, blocks, {}, opts); }, reps);
    const double flops = attention_flops(
        T, [&](int64_t t) { return std::min<double>(t + 1, 16 * bs + t % bs + 1); });
    std::printf("gather minimax blocks  %8.3f s  %6.1f GFLOP/s %s\n", s, flops / s / 1e9,
                ml::flop_ratios(flops / s, limits).c_str());
  }
  return 0;
}

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> out;
  std::string str(s);
  for (size_t pos = 0; pos < str.size();) {
    size_t next = str.find(',', pos);
    if (next == std::string::npos) next = str.size();
    out.push_back(std::atoll(str.substr(pos, next - pos).c_str()));
    pos = next + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> seqs{4096, 16384, 32768};
  int reps = 3;
  int64_t ref_max = 4096, seq = 0, kernels = 0;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seqs") == 0) seqs = parse_list(argv[i + 1]);
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--ref-max") == 0) ref_max = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--case") == 0) only = argv[i + 1];
    if (std::strcmp(argv[i], "--seq") == 0) seq = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--kernels") == 0) kernels = std::atoll(argv[i + 1]);
  }
  if (kernels > 0) return run_kernels(kernels, reps);
  if (!only.empty()) return run_child(only, seq, reps);

  // The children run on 2 threads: the limits too. The read buffer is freed before any child.
  torch::set_num_threads(2);
  const ml::Limits limits = ml::measure();
  std::printf("machine limits (this process, 2 threads):\n%s%s", ml::describe(limits).c_str(),
              ml::describe_blas(limits).c_str());

  std::printf(
      "B=1 dim=%lld heads=%lld (MiniMax: %lld kv groups), fp32, 2 threads, forward no "
      "grad, median of %d\n",
      static_cast<long long>(kDim), static_cast<long long>(kHeads), static_cast<long long>(kGroups),
      reps);
  std::printf("%-14s %6s %9s %8s %8s %9s %9s %9s %7s %8s\n", "mechanism", "T", "module s", "attn s",
              "peak MB", "ref s", "ref MB", "dense/sp", "ideal", "target");
  for (int64_t T : seqs) {
    const double dense_flops = attention_flops(T, [](int64_t t) { return t + 1.0; });
    const Measure mha = measure(argv[0], "dense_mha", T, reps, false);
    const Measure gqa = measure(argv[0], "dense_gqa2", T, reps, false);
    // `label` names the row; `name` is the case (also run on the reference backend up to ref_max).
    auto row = [&](const std::string& label, const std::string& name, const Measure& m,
                   const Measure* dense, double ideal) {
      char ref_s[16] = "-", ref_mb[16] = "-", ratio[16] = "-", ideal_s[16] = "-", target[16] = "-";
      if (dense != nullptr) {
        std::snprintf(ratio, sizeof(ratio), "%.2f", dense->attn() / m.attn());
        std::snprintf(ideal_s, sizeof(ideal_s), "%.2f", ideal);
        std::snprintf(target, sizeof(target), "%s",
                      dense->attn() / m.attn() >= ideal / 2 ? "met" : "not met");
        if (T <= ref_max) {
          const Measure ref = measure(argv[0], name, T, 1, true);
          std::snprintf(ref_s, sizeof(ref_s), "%.3f", ref.module);
          std::snprintf(ref_mb, sizeof(ref_mb), "%.0f", ref.peak);
        }
      }
      std::printf("%-14s %6lld %9.3f %8.3f %8.0f %9s %9s %9s %7s %8s\n", label.c_str(),
                  static_cast<long long>(T), m.module, m.attn(), m.peak, ref_s, ref_mb, ratio,
                  ideal_s, target);
      std::fflush(stdout);
    };
    row("dense_mha", "dense_mha", mha, nullptr, 0);
    for (int64_t top_k : {64, 256, 2048}) {
      const std::string name = "dsa_top" + std::to_string(top_k);
      // indexer: 4 heads of 64 over the causal half plus the head-weighted sum
      const double indexer = (2.0 * 4 * 64 + 2.0 * 4) * T * (T + 1) / 2;
      const double sparse =
          attention_flops(T, [&](int64_t t) { return std::min<double>(t + 1, top_k); });
      row(name, name, measure(argv[0], name, T, reps, false), &mha,
          dense_flops / (sparse + indexer));
    }
    {
      // CSA defaults: compression 4, top 16 entries + a raw window of 64; one shared KV head.
      // Its row compares module times (dense/sp over whole forwards).
      const int64_t r = 4, top = 16, window = 64;
      double entries = 0;
      for (int64_t t = 0; t < T; ++t) entries += static_cast<double>(t / r);
      const double indexer = (2.0 * 4 * 64 + 2.0 * 4) * entries;
      const double sparse = attention_flops(T, [&](int64_t t) {
        return std::min<double>(top, t / r) + std::min<double>(window, t + 1);
      });
      Measure dense_module = mha;
      dense_module.proj = -1;
      row("csa(module)", "csa", measure(argv[0], "csa", T, reps, false), &dense_module,
          dense_flops / (sparse + indexer));
    }
    row("dense_gqa2", "dense_gqa2", gqa, nullptr, 0);
    // MiniMax defaults: 16 blocks of 128 plus the current block; indexer 2 groups of 128
    const int64_t bs = 128, top = 16;
    const double indexer = 2.0 * kGroups * kHeadDim * T * (T + 1) / 2;
    const double sparse = attention_flops(
        T, [&](int64_t t) { return std::min<double>(t + 1, top * bs + t % bs + 1); });
    row("minimax", "minimax", measure(argv[0], "minimax", T, reps, false), &gqa,
        dense_flops / (sparse + indexer));
    // Dense attention's own time (module minus projections) against the machine.
    const double rate = dense_flops / mha.attn();
    std::printf("  dense_mha attention T%lld: %.1f GFLOP/s %s\n", static_cast<long long>(T),
                rate / 1e9, ml::flop_ratios(rate, limits).c_str());
    std::fflush(stdout);
  }
  return 0;
}
