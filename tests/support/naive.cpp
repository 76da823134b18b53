#include "support/naive.h"

#include <cmath>
#include <limits>

namespace attnkit {
namespace testing {

torch::Tensor naive_attention(const torch::Tensor& q_in,
                              const torch::Tensor& k_in,
                              const torch::Tensor& v_in,
                              double scale,
                              bool causal,
                              int64_t window_left,
                              const torch::Tensor& sinks_in) {
  torch::Tensor q = q_in.to(torch::kDouble).contiguous(), k = k_in.to(torch::kDouble).contiguous();
  torch::Tensor v = v_in.to(torch::kDouble).contiguous();
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), Dv = v.size(3);
  auto qa = q.accessor<double, 4>(), ka = k.accessor<double, 4>(), va = v.accessor<double, 4>();
  torch::Tensor out = torch::zeros({B, Hq, Tq, Dv}, torch::kDouble);
  auto oa = out.accessor<double, 4>();
  torch::Tensor sinks = sinks_in.defined() ? sinks_in.to(torch::kDouble).contiguous() : sinks_in;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hkv);
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t pos = i + Tk - Tq;
        std::vector<double> logit(Tk, -std::numeric_limits<double>::infinity());
        double m =
            sinks.defined() ? sinks[h].item<double>() : -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Tk; ++j) {
          if (causal && j > pos) continue;
          if (window_left >= 0 && j < pos - window_left) continue;
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += qa[b][h][i][d] * ka[b][hk][j][d];
          logit[j] = s * scale;
          m = std::max(m, logit[j]);
        }
        if (m == -std::numeric_limits<double>::infinity()) continue;  // nothing visible: zeros
        double denom = sinks.defined() ? std::exp(sinks[h].item<double>() - m) : 0.0;
        for (int64_t j = 0; j < Tk; ++j) denom += std::exp(logit[j] - m);
        for (int64_t j = 0; j < Tk; ++j) {
          const double p = std::exp(logit[j] - m) / denom;
          for (int64_t d = 0; d < Dv; ++d) oa[b][h][i][d] += p * va[b][hk][j][d];
        }
      }
    }
  }
  return out;
}

torch::Tensor naive_rope_half(const torch::Tensor& x_in,
                              int64_t rope_dim,
                              double theta,
                              int64_t offset) {
  torch::Tensor x = x_in.to(torch::kDouble).contiguous();
  torch::Tensor out = x.clone();
  auto xa = x.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  const int64_t half = rope_dim / 2;
  for (int64_t b = 0; b < x.size(0); ++b)
    for (int64_t t = 0; t < x.size(1); ++t)
      for (int64_t h = 0; h < x.size(2); ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = (offset + t) * std::pow(theta, -2.0 * i / rope_dim);
          const double x1 = xa[b][t][h][i], x2 = xa[b][t][h][i + half];
          oa[b][t][h][i] = x1 * std::cos(angle) - x2 * std::sin(angle);
          oa[b][t][h][i + half] = x2 * std::cos(angle) + x1 * std::sin(angle);
        }
  return out;
}

torch::Tensor naive_rope_interleaved(const torch::Tensor& x_in, double theta, int64_t offset) {
  torch::Tensor x = x_in.to(torch::kDouble).contiguous();
  torch::Tensor out = x.clone();
  auto xa = x.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  const int64_t d = x.size(3);
  for (int64_t b = 0; b < x.size(0); ++b)
    for (int64_t t = 0; t < x.size(1); ++t)
      for (int64_t h = 0; h < x.size(2); ++h)
        for (int64_t i = 0; i < d / 2; ++i) {
          const double angle = (offset + t) * std::pow(theta, -2.0 * i / d);
          const double x0 = xa[b][t][h][2 * i], x1 = xa[b][t][h][2 * i + 1];
          oa[b][t][h][2 * i] = x0 * std::cos(angle) - x1 * std::sin(angle);
          oa[b][t][h][2 * i + 1] = x1 * std::cos(angle) + x0 * std::sin(angle);
        }
  return out;
}

torch::Tensor naive_rms_norm(const torch::Tensor& x,
                             const torch::Tensor& w,
                             double eps,
                             bool zero_centered) {
  torch::Tensor xd = x.to(torch::kDouble);
  torch::Tensor wd = w.to(torch::kDouble);
  return xd / torch::sqrt(xd.pow(2).mean(-1, true) + eps) * (zero_centered ? wd + 1 : wd);
}

}  // namespace testing
}  // namespace attnkit
