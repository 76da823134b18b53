// Forward time (no grad) of the sparse attention modules (DeepSeek, CSA, MiniMax) on the fused
// path (gather kernel over the selected tokens or entries) against the masked dense reference path
// (ATTNKIT_BACKEND=reference) and against dense fused causal GQA of the same shape (B = 1, dim
// 1024, 8 heads). Medians of repeats, 2 threads. The ideal ratio is dense attention FLOPs over
// sparse attention plus indexer FLOPs (causal halves counted for both).
//
//   build-fs/bench/sparse_attention_bench [--seqs 4096,16384] [--reps 3] [--ref-max 4096]

#include <attnkit/attnkit.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

constexpr int64_t kDim = 1024, kHeads = 8, kHeadDim = kDim / kHeads;

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

double time_module(const std::function<torch::Tensor(const torch::Tensor&)>& fwd,
                   const torch::Tensor& x,
                   int reps,
                   bool reference) {
  if (reference) {
    setenv("ATTNKIT_BACKEND", "reference", 1);
  } else {
    unsetenv("ATTNKIT_BACKEND");
  }
  torch::NoGradGuard no_grad;
  double s = median_seconds([&] { fwd(x); }, reps);
  unsetenv("ATTNKIT_BACKEND");
  return s;
}

// Causal attention FLOPs (QK^T and PV) of H heads when query t sees keys(t) keys.
double attention_flops(int64_t T, const std::function<double(int64_t)>& keys) {
  double sum = 0;
  for (int64_t t = 0; t < T; ++t) sum += keys(t);
  return 4.0 * kHeads * kHeadDim * sum;
}

struct Row {
  std::string name;
  int64_t T;
  double fused, reference, dense, ideal;
};

void print(const Row& r) {
  char ref[32] = "-";
  if (r.reference > 0) std::snprintf(ref, sizeof(ref), "%.3f", r.reference);
  std::printf("%-22s %6lld %10.3f %10s %10.3f %12.2f %10.2f\n", r.name.c_str(),
              static_cast<long long>(r.T), r.fused, ref, r.dense, r.dense / r.fused, r.ideal);
  std::fflush(stdout);
}

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> out;
  std::string str(s);
  size_t pos = 0;
  while (pos < str.size()) {
    size_t next = str.find(',', pos);
    if (next == std::string::npos) next = str.size();
    out.push_back(std::atoll(str.substr(pos, next - pos).c_str()));
    pos = next + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> seqs{4096, 16384};
  int reps = 3;
  int64_t ref_max = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seqs") == 0) seqs = parse_list(argv[i + 1]);
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--ref-max") == 0) ref_max = std::atoll(argv[i + 1]);
  }
  torch::set_num_threads(2);
  torch::manual_seed(0);
  std::printf("B=1 dim=%lld heads=%lld, forward no grad, median of %d, seconds\n",
              static_cast<long long>(kDim), static_cast<long long>(kHeads), reps);
  std::printf("%-22s %6s %10s %10s %10s %12s %10s\n", "mechanism", "T", "fused", "masked_ref",
              "dense_gqa", "dense/fused", "ideal");

  for (int64_t T : seqs) {
    torch::Tensor x = torch::randn({1, T, kDim});
    const bool ref = T <= ref_max;
    const double dense_flops = attention_flops(T, [](int64_t t) { return t + 1.0; });

    attnkit::GroupedQueryAttention mha(
        attnkit::GroupedQueryAttentionOptions(kDim, kHeads, kHeads).causal(true));
    const double dense_mha =
        time_module([&](const torch::Tensor& in) { return mha->forward(in); }, x, reps, false);

    for (int64_t top_k : {64, 256, 2048}) {
      attnkit::DeepSeekSparseAttention dsa(
          attnkit::DeepSeekSparseAttentionOptions(kDim, kHeads).top_k(top_k));
      auto fwd = [&](const torch::Tensor& in) { return dsa->forward(in); };
      const auto& o = dsa->options;
      // indexer: Hi heads of q.k over the causal half plus the head-weighted sum
      const double indexer =
          (2.0 * o.num_index_heads() * o.index_head_dim() + 2.0 * o.num_index_heads()) * T *
          (T + 1) / 2;
      const double sparse =
          attention_flops(T, [&](int64_t t) { return std::min<double>(t + 1, top_k); });
      Row r{"dsa_top" + std::to_string(top_k),        T,         time_module(fwd, x, reps, false),
            ref ? time_module(fwd, x, 1, true) : 0.0, dense_mha, dense_flops / (sparse + indexer)};
      print(r);
    }

    // CSA (defaults: r 4, top_k 16, window 64, c = 128): one shared KV head
    attnkit::CompressedSparseAttention csa(attnkit::CompressedSparseAttentionOptions(kDim, kHeads));
    {
      const auto& o = csa->options;
      const int64_t r = o.compression_rate();
      auto fwd = [&](const torch::Tensor& in) { return csa->forward(in); };
      // indexer: Hi heads of qi.ki over the complete entries of the past plus the weighted sum
      double visible_entries = 0;
      for (int64_t t = 0; t < T; ++t) visible_entries += static_cast<double>(t / r);
      const double indexer =
          (2.0 * o.num_index_heads() * o.index_dim() + 2.0 * o.num_index_heads()) * visible_entries;
      const double sparse = attention_flops(T, [&](int64_t t) {
        return std::min<double>(o.top_k(), t / r) + std::min<double>(o.window(), t + 1);
      });
      Row r_csa{"csa_top" + std::to_string(o.top_k()) + "_w" + std::to_string(o.window()),
                T,
                time_module(fwd, x, reps, false),
                ref ? time_module(fwd, x, 1, true) : 0.0,
                dense_mha,
                dense_flops / (sparse + indexer)};
      print(r_csa);
    }

    const int64_t groups = 2;
    attnkit::GroupedQueryAttention gqa(
        attnkit::GroupedQueryAttentionOptions(kDim, kHeads, groups).causal(true));
    const double dense_gqa =
        time_module([&](const torch::Tensor& in) { return gqa->forward(in); }, x, reps, false);
    attnkit::MiniMaxSparseAttention msa(
        attnkit::MiniMaxSparseAttentionOptions(kDim, kHeads, groups));
    const auto& o = msa->options;
    const int64_t bs = o.block_size(), di = o.index_dim() > 0 ? o.index_dim() : kHeadDim;
    auto fwd = [&](const torch::Tensor& in) { return msa->forward(in); };
    const double indexer = 2.0 * groups * di * T * (T + 1) / 2;
    // up to top_k full blocks plus the partial current block
    const double sparse = attention_flops(
        T, [&](int64_t t) { return std::min<double>(t + 1, o.top_k() * bs + t % bs + 1); });
    Row r{"minimax_top" + std::to_string(o.top_k()) + "_bs" + std::to_string(bs),
          T,
          time_module(fwd, x, reps, false),
          ref ? time_module(fwd, x, 1, true) : 0.0,
          dense_gqa,
          dense_flops / (sparse + indexer)};
    print(r);
  }
  return 0;
}
