// The per-(batch, head) body of the fused gated delta rule forward, compiled once per ISA:
// fused.cpp (baseline), fused_avx2.cpp and fused_avx512.cpp include it inside an anonymous
// namespace after <algorithm>, <cmath>, <cstdint> and params.h, so each copy has internal
// linkage and takes its target's vector width. No #pragma once and no includes: that is the
// point. Legend and the rule in params.h; the algorithm in fused.cpp.

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y += alpha * x
template <typename T>
inline void axpy(T* y, T alpha, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Scratch of one task, carved from one buffer: sizes in elements.
template <typename T>
struct Scratch {
  T* S;    // [Dk, Dv]
  T* Kc;   // [C, Dk] the chunk's keys, contiguous
  T* Qc;   // [C, Dk] the chunk's queries, scaled
  T* W;    // [C, Dk]
  T* U;    // [C, Dv]
  T* A;    // [C, C]
  T* QK;   // [C, C]
  T* gam;  // [C]
  T* bet;  // [C]

  static int64_t elements(int64_t C, int64_t Dk, int64_t Dv) {
    return Dk * Dv + 3 * C * Dk + C * Dv + 2 * C * C + 2 * C;
  }
  Scratch(T* base, int64_t C, int64_t Dk, int64_t Dv) {
    S = base;
    Kc = S + Dk * Dv;
    Qc = Kc + C * Dk;
    W = Qc + C * Dk;
    U = W + C * Dk;
    A = U + C * Dv;
    QK = A + C * C;
    gam = QK + C * C;
    bet = gam + C;
  }
};

// One (batch b, value head h): all chunks in order, the state in sc.S.
template <typename T>
void forward_head(const GatedDeltaParams<T>& p, int64_t b, int64_t h, Scratch<T>& sc) {
  const int64_t T_len = p.seq_len, Dk = p.head_dim_qk, Dv = p.head_dim_v, C = p.chunk_size;
  const int64_t hq = h / (p.num_heads_v / p.num_heads_qk);
  const T scale = static_cast<T>(p.scale);
  const T* q = p.q + b * p.q_stride_b + hq * p.q_stride_h;
  const T* k = p.k + b * p.k_stride_b + hq * p.k_stride_h;
  const T* v = p.v + b * p.v_stride_b + h * p.v_stride_h;
  const T* g = p.g + b * p.g_stride_b + h * p.g_stride_h;
  const T* beta = p.beta + b * p.beta_stride_b + h * p.beta_stride_h;
  T* out = p.out + b * p.out_stride_b + h * p.out_stride_h;
  T* S = sc.S;

  // S <- initial state or 0
  for (int64_t i = 0; i < Dk; ++i) {
    for (int64_t j = 0; j < Dv; ++j) {
      S[i * Dv + j] = p.maybe_initial_state == nullptr
                          ? T(0)
                          : p.maybe_initial_state[b * p.init_stride_b + h * p.init_stride_h +
                                                  i * p.init_stride_k + j * p.init_stride_v];
    }
  }

  for (int64_t c0 = 0; c0 < T_len; c0 += C) {
    const int64_t n = std::min(C, T_len - c0);
    // Gather the chunk: contiguous keys and scaled queries, gamma and beta.
    T acc = 0;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = c0 + t;
      for (int64_t i = 0; i < Dk; ++i) {
        sc.Kc[t * Dk + i] = k[pos * p.k_stride_t + i * p.k_stride_d];
        sc.Qc[t * Dk + i] = scale * q[pos * p.q_stride_t + i * p.q_stride_d];
      }
      acc += g[pos * p.g_stride_t];
      sc.gam[t] = acc;
      sc.bet[t] = beta[pos * p.beta_stride_t];
    }
    // A (strictly lower) and QK (lower, diagonal included), decayed.
    for (int64_t t = 0; t < n; ++t) {
      const T* kt = sc.Kc + t * Dk;
      const T* qt = sc.Qc + t * Dk;
      for (int64_t s = 0; s <= t; ++s) {
        const T* ks = sc.Kc + s * Dk;
        const T decay = std::exp(sc.gam[t] - sc.gam[s]);
        if (s < t) sc.A[t * C + s] = sc.bet[t] * decay * dot(kt, ks, Dk);
        sc.QK[t * C + s] = decay * dot(qt, ks, Dk);
      }
    }
    // Forward substitution: row t of [W | U] = rhs_t - sum_{s < t} A[t,s] row s, then U -= W S.
    for (int64_t t = 0; t < n; ++t) {
      T* wt = sc.W + t * Dk;
      T* ut = sc.U + t * Dv;
      const T wscale = sc.bet[t] * std::exp(sc.gam[t]);
      for (int64_t i = 0; i < Dk; ++i) wt[i] = wscale * sc.Kc[t * Dk + i];
      for (int64_t j = 0; j < Dv; ++j)
        ut[j] = sc.bet[t] * v[(c0 + t) * p.v_stride_t + j * p.v_stride_d];
      for (int64_t s = 0; s < t; ++s) {
        const T a = sc.A[t * C + s];
        axpy(wt, -a, sc.W + s * Dk, Dk);
        axpy(ut, -a, sc.U + s * Dv, Dv);
      }
    }
    for (int64_t t = 0; t < n; ++t) {
      T* ut = sc.U + t * Dv;
      const T* wt = sc.W + t * Dk;
      for (int64_t i = 0; i < Dk; ++i) axpy(ut, -wt[i], S + i * Dv, Dv);
    }
    // Outputs: o_t = exp(gamma_t) S^T q_t + sum_{s <= t} QK[t,s] u_s, accumulated in the output
    // row itself (its elements are contiguous: out_stride_d == 1 is asserted by the caller).
    for (int64_t t = 0; t < n; ++t) {
      T* ot = out + (c0 + t) * p.out_stride_t;
      for (int64_t j = 0; j < Dv; ++j) ot[j] = T(0);
      const T* qt = sc.Qc + t * Dk;
      const T gt = std::exp(sc.gam[t]);
      for (int64_t i = 0; i < Dk; ++i) axpy(ot, gt * qt[i], S + i * Dv, Dv);
      for (int64_t s = 0; s <= t; ++s) axpy(ot, sc.QK[t * C + s], sc.U + s * Dv, Dv);
    }
    // S <- exp(gamma_last) S + sum_s exp(gamma_last - gamma_s) k_s u_s^T
    const T last = sc.gam[n - 1];
    const T decay_all = std::exp(last);
    for (int64_t i = 0; i < Dk * Dv; ++i) S[i] *= decay_all;
    for (int64_t s = 0; s < n; ++s) {
      const T ds = std::exp(last - sc.gam[s]);
      const T* ks = sc.Kc + s * Dk;
      const T* us = sc.U + s * Dv;
      for (int64_t i = 0; i < Dk; ++i) axpy(S + i * Dv, ds * ks[i], us, Dv);
    }
  }

  for (int64_t i = 0; i < Dk; ++i) {
    for (int64_t j = 0; j < Dv; ++j) {
      p.final_state[b * p.final_stride_b + h * p.final_stride_h + i * p.final_stride_k +
                    j * p.final_stride_v] = S[i * Dv + j];
    }
  }
}

// Tasks [begin, end) of the flattened (batch, value head) space, sharing one scratch.
template <typename T>
void forward_heads(const GatedDeltaParams<T>& p, int64_t begin, int64_t end, T* scratch) {
  Scratch<T> sc(scratch, p.chunk_size, p.head_dim_qk, p.head_dim_v);
  for (int64_t bh = begin; bh < end; ++bh) {
    forward_head(p, bh / p.num_heads_v, bh % p.num_heads_v, sc);
  }
}
