// The per-(batch, head) body of the fused gated delta rule forward, compiled once per ISA:
// fused.cpp (baseline), fused_avx2.cpp and fused_avx512.cpp include it inside an anonymous
// namespace after <algorithm>, <cmath>, <cstdint> and params.h, so each copy has internal
// linkage and takes its target's vector width. No #pragma once and no includes: that is the
// point. Legend and the rule in params.h; the algorithm in fused.cpp.

// y[0, n) += alpha * sum_r c[r] * rows[r * stride + (0, n)]: every product of the chunked form
// (K K^T, Q K^T, the substitution, W S, Q S, K^T U) is this combination of contiguous rows.
// Columns go in blocks of kBlock held in a local accumulator that the compiler keeps in
// registers (2 zmm of float), so the inner loop is one load and one FMA per vector; a
// runtime-width tail handles n % kBlock.
template <typename T>
inline void combine_rows(
    T* y, T alpha, const T* c, const T* rows, int64_t nrows, int64_t stride, int64_t n) {
  constexpr int64_t kBlock = 128 / static_cast<int64_t>(sizeof(T));  // 32 floats, 16 doubles
  int64_t j0 = 0;
  for (; j0 + kBlock <= n; j0 += kBlock) {
    T acc[kBlock] = {};
    for (int64_t r = 0; r < nrows; ++r) {
      const T cr = c[r];
      const T* row = rows + r * stride + j0;
#pragma omp simd
      for (int64_t j = 0; j < kBlock; ++j) acc[j] += cr * row[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < kBlock; ++j) y[j0 + j] += alpha * acc[j];
  }
  if (j0 < n) {
    const int64_t rest = n - j0;
    T acc[kBlock] = {};
    for (int64_t r = 0; r < nrows; ++r) {
      const T cr = c[r];
      const T* row = rows + r * stride + j0;
#pragma omp simd
      for (int64_t j = 0; j < rest; ++j) acc[j] += cr * row[j];
    }
    for (int64_t j = 0; j < rest; ++j) y[j0 + j] += alpha * acc[j];
  }
}

// Scratch of one task, carved from one buffer: sizes in elements.
template <typename T>
struct Scratch {
  T* S;    // [Dk, Dv] the state
  T* Kc;   // [C, Dk] the chunk's keys, contiguous
  T* KT;   // [Dk, C] the same, transposed
  T* Qc;   // [C, Dk] the chunk's queries, scaled
  T* W;    // [C, Dk]; reused as [Dk, C] (exp(gamma_last - gamma) K)^T for the state update
  T* U;    // [C, Dv]
  T* A;    // [C, C] (row t: columns < t)
  T* QK;   // [C, C] (row t: columns <= t)
  T* gam;  // [C]
  T* bet;  // [C]

  static int64_t elements(int64_t C, int64_t Dk, int64_t Dv) {
    return Dk * Dv + 4 * C * Dk + C * Dv + 2 * C * C + 2 * C;
  }
  Scratch(T* base, int64_t C, int64_t Dk, int64_t Dv) {
    S = base;
    Kc = S + Dk * Dv;
    KT = Kc + C * Dk;
    Qc = KT + Dk * C;
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
    // Gather the chunk: contiguous keys (and transposed), scaled queries, gamma and beta.
    T acc = 0;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = c0 + t;
      for (int64_t i = 0; i < Dk; ++i) {
        const T kv = k[pos * p.k_stride_t + i * p.k_stride_d];
        sc.Kc[t * Dk + i] = kv;
        sc.KT[i * C + t] = kv;
        sc.Qc[t * Dk + i] = scale * q[pos * p.q_stride_t + i * p.q_stride_d];
      }
      acc += g[pos * p.g_stride_t];
      sc.gam[t] = acc;
      sc.bet[t] = beta[pos * p.beta_stride_t];
    }
    // Row t of K K^T (columns < t) and Q K^T (columns <= t), then decayed (and beta for A).
    for (int64_t t = 0; t < n; ++t) {
      T* at = sc.A + t * C;
      T* qkt = sc.QK + t * C;
      for (int64_t s = 0; s <= t; ++s) at[s] = qkt[s] = T(0);
      combine_rows(at, T(1), sc.Kc + t * Dk, sc.KT, Dk, C, t);
      combine_rows(qkt, T(1), sc.Qc + t * Dk, sc.KT, Dk, C, t + 1);
      for (int64_t s = 0; s <= t; ++s) {
        const T decay = std::exp(sc.gam[t] - sc.gam[s]);
        at[s] *= sc.bet[t] * decay;
        qkt[s] *= decay;
      }
    }
    // Forward substitution: row t of [W | U] = rhs_t - sum_{s < t} A[t,s] row s; then
    // U_t -= W_t S (the state's contribution).
    for (int64_t t = 0; t < n; ++t) {
      T* wt = sc.W + t * Dk;
      T* ut = sc.U + t * Dv;
      const T wscale = sc.bet[t] * std::exp(sc.gam[t]);
      for (int64_t i = 0; i < Dk; ++i) wt[i] = wscale * sc.Kc[t * Dk + i];
      for (int64_t j = 0; j < Dv; ++j) {
        ut[j] = sc.bet[t] * v[(c0 + t) * p.v_stride_t + j * p.v_stride_d];
      }
      combine_rows(wt, T(-1), sc.A + t * C, sc.W, t, Dk, Dk);
      combine_rows(ut, T(-1), sc.A + t * C, sc.U, t, Dv, Dv);
    }
    for (int64_t t = 0; t < n; ++t)
      combine_rows(sc.U + t * Dv, T(-1), sc.W + t * Dk, S, Dk, Dv, Dv);
    // Outputs: o_t = exp(gamma_t) S^T q_t + sum_{s <= t} QK[t,s] u_s, accumulated in the output
    // row itself (its elements are contiguous: out_stride_d == 1 is asserted by the caller).
    for (int64_t t = 0; t < n; ++t) {
      T* ot = out + (c0 + t) * p.out_stride_t;
      for (int64_t j = 0; j < Dv; ++j) ot[j] = T(0);
      combine_rows(ot, std::exp(sc.gam[t]), sc.Qc + t * Dk, S, Dk, Dv, Dv);
      combine_rows(ot, T(1), sc.QK + t * C, sc.U, t + 1, Dv, Dv);
    }
    // S <- exp(gamma_last) S + sum_s exp(gamma_last - gamma_s) k_s u_s^T; row i of the sum is
    // a combination of the rows of U with coefficients (exp(gamma_last - gamma) K)^T[i, :].
    const T last = sc.gam[n - 1];
    const T decay_all = std::exp(last);
    T* kd = sc.W;  // W is no longer needed in this chunk
    for (int64_t s = 0; s < n; ++s) {
      const T ds = std::exp(last - sc.gam[s]);
      for (int64_t i = 0; i < Dk; ++i) kd[i * C + s] = ds * sc.Kc[s * Dk + i];
    }
    for (int64_t i = 0; i < Dk; ++i) {
      T* si = S + i * Dv;
      for (int64_t j = 0; j < Dv; ++j) si[j] *= decay_all;
      combine_rows(si, T(1), kd + i * C, sc.U, n, Dv, Dv);
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
