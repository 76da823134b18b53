#pragma once
// A naive multi-head softmax attention for the attzoo-family tests (local, dilated, block,
// Longformer, ALiBi, LSH), written from docs/catalog.md with explicit loops in double
// and no attnkit code: the module's q/k/v/o weights, a keep rule and an optional logit bias.

#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace attnkit {
namespace testing {

struct NaiveZooResult {
  torch::Tensor output;   // [B, T, dim] (double)
  torch::Tensor weights;  // [B, H, T, T] (double)
  torch::Tensor heads;    // per-head outputs before o_proj [B, H, T, hd] (double)
};

inline torch::Tensor naive_linear(const torch::Tensor& in, const torch::nn::Linear& l) {
  torch::Tensor y = in.to(torch::kDouble).matmul(l->weight.to(torch::kDouble).t());
  return l->bias.defined() ? y + l->bias.to(torch::kDouble) : y;
}

/// keep(b, h, i, j): may query i of head h see key j; bias(h, i, j): added to the scaled logit;
/// rotate: applied to q and k as [B, T, H, hd] (double), e.g. a naive RoPE.
inline NaiveZooResult naive_zoo_attention(
    const torch::nn::Linear& q_proj,
    const torch::nn::Linear& k_proj,
    const torch::nn::Linear& v_proj,
    const torch::nn::Linear& o_proj,
    int64_t num_heads,
    double scale,
    const torch::Tensor& x,
    const std::function<bool(int64_t, int64_t, int64_t, int64_t)>& keep,
    const std::function<double(int64_t, int64_t, int64_t)>& bias = {},
    const std::function<torch::Tensor(const torch::Tensor&)>& rotate = {}) {
  torch::NoGradGuard no_grad;
  const int64_t B = x.size(0), T = x.size(1), D = q_proj->weight.size(0), H = num_heads;
  const int64_t hd = D / H;
  torch::Tensor q = naive_linear(x, q_proj), k = naive_linear(x, k_proj);
  torch::Tensor v = naive_linear(x, v_proj);
  if (rotate) {
    q = rotate(q.view({B, T, H, hd})).reshape({B, T, D}).contiguous();
    k = rotate(k.view({B, T, H, hd})).reshape({B, T, D}).contiguous();
  }
  auto qa = q.accessor<double, 3>(), ka = k.accessor<double, 3>(), va = v.accessor<double, 3>();
  NaiveZooResult r;
  r.heads = torch::zeros({B, H, T, hd}, torch::kDouble);
  r.weights = torch::zeros({B, H, T, T}, torch::kDouble);
  auto ha = r.heads.accessor<double, 4>();
  auto wa = r.weights.accessor<double, 4>();
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> logit(T, ninf);
        double m = ninf;
        for (int64_t j = 0; j < T; ++j) {
          if (!keep(b, h, i, j)) continue;
          double s = 0;
          for (int64_t d = 0; d < hd; ++d) s += qa[b][i][h * hd + d] * ka[b][j][h * hd + d];
          logit[j] = s * scale + (bias ? bias(h, i, j) : 0.0);
          m = std::max(m, logit[j]);
        }
        if (m == ninf) continue;  // sees nothing: zeros
        double denom = 0;
        for (int64_t j = 0; j < T; ++j) denom += std::exp(logit[j] - m);
        for (int64_t j = 0; j < T; ++j) {
          wa[b][h][i][j] = std::exp(logit[j] - m) / denom;
          for (int64_t d = 0; d < hd; ++d) ha[b][h][i][d] += wa[b][h][i][j] * va[b][j][h * hd + d];
        }
      }
    }
  }
  torch::Tensor merged = r.heads.transpose(1, 2).reshape({B, T, D});
  r.output = naive_linear(merged, o_proj);
  return r;
}

}  // namespace testing
}  // namespace attnkit
