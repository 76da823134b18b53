// Scalar reference of the chunked gated delta rule forward (llm.c style: plain loops, no
// threads, double accumulators). It builds the UT transform T = (I + A)^-1 of every chunk
// explicitly by forward substitution, then W, U, the outputs and the next state, exactly as the
// formulas in gated_delta_net.h read. Legend in params.h.

#include "kernels/gated_delta/kernel.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace attnkit {
namespace kernels {
namespace gated_delta {

template <typename scalar_t>
void gated_delta_forward_reference(const GatedDeltaParams<scalar_t>& p) {
  const int64_t B = p.batch_size, Hv = p.num_heads_v, T = p.seq_len;
  const int64_t Dk = p.head_dim_qk, Dv = p.head_dim_v, C = p.chunk_size;
  const int64_t G = Hv / p.num_heads_qk;

  // Scratch, reused by every (b, h) and chunk.
  std::vector<double> S(Dk * Dv);  // [Dk, Dv] the state
  std::vector<double> gam(C);      // cumulative log decay inside the chunk
  std::vector<double> A(C * C);    // [C, C] strictly lower
  std::vector<double> Tm(C * C);   // [C, C] (I + A)^-1, unit lower triangular
  std::vector<double> W(C * Dk);   // [C, Dk]
  std::vector<double> U(C * Dv);   // [C, Dv]

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hv; ++h) {
      const int64_t hq = h / G;
      const scalar_t* q = p.q + b * p.q_stride_b + hq * p.q_stride_h;
      const scalar_t* k = p.k + b * p.k_stride_b + hq * p.k_stride_h;
      const scalar_t* v = p.v + b * p.v_stride_b + h * p.v_stride_h;
      const scalar_t* g = p.g + b * p.g_stride_b + h * p.g_stride_h;
      const scalar_t* beta = p.beta + b * p.beta_stride_b + h * p.beta_stride_h;
      scalar_t* out = p.out + b * p.out_stride_b + h * p.out_stride_h;
      auto K = [&](int64_t t, int64_t i) -> double {
        return k[t * p.k_stride_t + i * p.k_stride_d];
      };
      auto Q = [&](int64_t t, int64_t i) -> double {
        return p.scale * q[t * p.q_stride_t + i * p.q_stride_d];
      };
      auto V = [&](int64_t t, int64_t j) -> double {
        return v[t * p.v_stride_t + j * p.v_stride_d];
      };

      for (int64_t i = 0; i < Dk; ++i) {
        for (int64_t j = 0; j < Dv; ++j) {
          S[i * Dv + j] =
              p.maybe_initial_state == nullptr
                  ? 0.0
                  : static_cast<double>(
                        p.maybe_initial_state[b * p.init_stride_b + h * p.init_stride_h +
                                              i * p.init_stride_k + j * p.init_stride_v]);
        }
      }

      for (int64_t c0 = 0; c0 < T; c0 += C) {
        const int64_t n = std::min(C, T - c0);
        // gamma_t = sum_{s <= t} g_s inside the chunk
        double acc = 0.0;
        for (int64_t t = 0; t < n; ++t) {
          acc += static_cast<double>(g[(c0 + t) * p.g_stride_t]);
          gam[t] = acc;
        }
        auto bet = [&](int64_t t) -> double { return beta[(c0 + t) * p.beta_stride_t]; };
        // A[t,s] = beta_t exp(gamma_t - gamma_s) k_t.k_s for s < t
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t s = 0; s < n; ++s) {
            double a = 0.0;
            if (s < t) {
              double dot = 0.0;
              for (int64_t i = 0; i < Dk; ++i) dot += K(c0 + t, i) * K(c0 + s, i);
              a = bet(t) * std::exp(gam[t] - gam[s]) * dot;
            }
            A[t * C + s] = a;
          }
        }
        // T = (I + A)^-1 by forward substitution, row by row:
        // T[t, :] = e_t - sum_{m < t} A[t, m] T[m, :]
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t s = 0; s < n; ++s) {
            double x = (s == t) ? 1.0 : 0.0;
            for (int64_t m = 0; m < t; ++m) x -= A[t * C + m] * Tm[m * C + s];
            Tm[t * C + s] = x;
          }
        }
        // W = T diag(beta exp(gamma)) K;  U = T diag(beta) V - W S0
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t i = 0; i < Dk; ++i) {
            double x = 0.0;
            for (int64_t s = 0; s <= t; ++s)
              x += Tm[t * C + s] * bet(s) * std::exp(gam[s]) * K(c0 + s, i);
            W[t * Dk + i] = x;
          }
          for (int64_t j = 0; j < Dv; ++j) {
            double x = 0.0;
            for (int64_t s = 0; s <= t; ++s) x += Tm[t * C + s] * bet(s) * V(c0 + s, j);
            for (int64_t i = 0; i < Dk; ++i) x -= W[t * Dk + i] * S[i * Dv + j];
            U[t * Dv + j] = x;
          }
        }
        // o_t = exp(gamma_t) S0^T q_t + sum_{s <= t} exp(gamma_t - gamma_s) (q_t.k_s) u_s
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t j = 0; j < Dv; ++j) {
            double x = 0.0;
            for (int64_t i = 0; i < Dk; ++i) x += Q(c0 + t, i) * S[i * Dv + j];
            x *= std::exp(gam[t]);
            for (int64_t s = 0; s <= t; ++s) {
              double qk = 0.0;
              for (int64_t i = 0; i < Dk; ++i) qk += Q(c0 + t, i) * K(c0 + s, i);
              x += std::exp(gam[t] - gam[s]) * qk * U[s * Dv + j];
            }
            out[(c0 + t) * p.out_stride_t + j * p.out_stride_d] = static_cast<scalar_t>(x);
          }
        }
        // S1 = exp(gamma_last) S0 + sum_s exp(gamma_last - gamma_s) k_s u_s^T
        const double last = gam[n - 1];
        for (int64_t i = 0; i < Dk; ++i) {
          for (int64_t j = 0; j < Dv; ++j) {
            double x = std::exp(last) * S[i * Dv + j];
            for (int64_t s = 0; s < n; ++s)
              x += std::exp(last - gam[s]) * K(c0 + s, i) * U[s * Dv + j];
            S[i * Dv + j] = x;
          }
        }
      }

      for (int64_t i = 0; i < Dk; ++i) {
        for (int64_t j = 0; j < Dv; ++j) {
          p.final_state[b * p.final_stride_b + h * p.final_stride_h + i * p.final_stride_k +
                        j * p.final_stride_v] = static_cast<scalar_t>(S[i * Dv + j]);
        }
      }
    }
  }
}

template void gated_delta_forward_reference<float>(const GatedDeltaParams<float>&);
template void gated_delta_forward_reference<double>(const GatedDeltaParams<double>&);

}  // namespace gated_delta
}  // namespace kernels
}  // namespace attnkit
