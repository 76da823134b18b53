// SIMD gather-attention backward (recompute from the saved lse), included after forward_impl.h
// by the ISA translation units. Work items are query positions (b, kv head, i) as in the
// forward; dK and dV rows can be hit by any item, so each thread accumulates into its own fp32
// copies, summed at the end (deterministic, no atomics). Per row and kLanes keys at a time:
//   forward: s = scale q.k ; e = exp(s - lse) ; p = w e ; out = sum p v
//   dP = dO . v ;  dS = p (dP - Di) ;  dw += e (dP - Di) (summed over the G heads)
//   dq += scale dS k ;  dk += scale dS q ;  dv += p dO

static void gather_backward_impl(const GatherParams& p, const GatherBackwardParams& gr) {
  const int64_t B = p.batch_size, Hq = p.num_heads_q, Hkv = p.num_heads_kv, G = Hq / Hkv;
  const int64_t Tq = p.seq_len_q, Tkv = p.seq_len_kv, K = p.num_keys, S = p.slots();
  const int64_t bs = p.block_size;
  const int64_t D = p.head_dim, Dv = p.head_dim_v;
  const int64_t d_pad = round_up_lanes(D), dv_pad = round_up_lanes(Dv);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr int64_t L = Vec::kLanes;
  const int num_threads = at::get_num_threads();
  // Per-thread: G rows of q, dO, dq; key / value blocks and their transposes; dk / dv copies.
  const int64_t f_rows = G * (d_pad + dv_pad + d_pad) + 2 * G;
  const int64_t f_blocks = 2 * L * d_pad + 2 * L * dv_pad;
  const int64_t f_kv = B * Hkv * Tkv * (D + Dv);
  const int64_t per_thread = f_rows + f_blocks + f_kv;
  std::vector<float> slab(static_cast<size_t>(per_thread * num_threads), 0.0f);
  std::vector<int64_t> key_slab(static_cast<size_t>(S * num_threads));

  at::parallel_for(0, B * Hkv * Tq, 16, [&](int64_t begin, int64_t end) {
    float* base = slab.data() + per_thread * at::get_thread_num();
    float* qrow = base;                                          // [G, d_pad]
    float* dorow = qrow + G * d_pad;                             // [G, dv_pad]
    float* dqrow = dorow + G * dv_pad;                           // [G, d_pad]
    float* lse = dqrow + G * d_pad;                              // [G]
    float* di = lse + G;                                         // [G]
    float* kblock = di + G;                                      // [L, d_pad]
    float* kt = kblock + L * d_pad;                              // [d_pad, L]
    float* vblock = kt + L * d_pad;                              // [L, dv_pad]
    float* vt = vblock + L * dv_pad;                             // [dv_pad, L]
    float* dk_copy = vt + L * dv_pad;                            // [B, Hkv, Tkv, D]
    float* dv_copy = dk_copy + B * Hkv * Tkv * D;                // [B, Hkv, Tkv, Dv]
    int64_t* keys = key_slab.data() + S * at::get_thread_num();  // the row's key per slot
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (Hkv * Tq), hkv = (row / Tq) % Hkv, i = row % Tq;
      const float* w = p.maybe_weights ? p.maybe_weights + p.list_row(row) * K : nullptr;
      p.row_keys(p.indices + p.list_row(row) * K, i, keys);
      bool any_row = false;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hkv * G + g, out_row = (b * Hq + h) * Tq + i;
        load_row(p.q, p.dtype, b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t, p.q_stride_d,
                 D, d_pad, qrow + g * d_pad);
        load_row(gr.dout, p.dtype, out_row * Dv, 1, Dv, dv_pad, dorow + g * dv_pad);
        lse[g] = p.lse[out_row];
        any_row = any_row || lse[g] != kNegInf;
        float s = 0.0f;  // Di = dO . O
        for (int64_t e = 0; e < Dv; ++e) {
          s += dorow[g * dv_pad + e] * flash::load_elem(p.out, p.dtype, out_row * Dv + e);
        }
        di[g] = s;
        fill_floats(dqrow + g * d_pad, dqrow + (g + 1) * d_pad, 0.0f);
      }
      if (!any_row) continue;  // no usable key: the zero output depends on nothing
      float* dk_base = dk_copy + (b * Hkv + hkv) * Tkv * D;
      float* dv_base = dv_copy + (b * Hkv + hkv) * Tkv * Dv;
      for (int64_t n0 = 0; n0 < S; n0 += L) {
        const int64_t nk = std::min<int64_t>(L, S - n0);
        for (int64_t c = 0; c < L; ++c) {
          const int64_t n = n0 + c;
          float* kd = kblock + c * d_pad;
          float* vd = vblock + c * dv_pad;
          if (c < nk && keys[n] >= 0) {
            load_row(p.k, p.dtype, b * p.k_stride_b + hkv * p.k_stride_h + keys[n] * p.k_stride_t,
                     p.k_stride_d, D, d_pad, kd);
            load_row(p.v, p.dtype, b * p.v_stride_b + hkv * p.v_stride_h + keys[n] * p.v_stride_t,
                     p.v_stride_d, Dv, dv_pad, vd);
          } else {
            fill_floats(kd, kd + d_pad, 0.0f);
            fill_floats(vd, vd + dv_pad, 0.0f);
          }
        }
        for (int64_t d = 0; d < d_pad; d += L)
          Vec::transpose_block(kblock + d, d_pad, kt + d * L, L);
        for (int64_t e = 0; e < dv_pad; e += L)
          Vec::transpose_block(vblock + e, dv_pad, vt + e * L, L);
        for (int64_t g = 0; g < G; ++g) {
          if (lse[g] == kNegInf) continue;
          const float* qg = qrow + g * d_pad;
          const float* dog = dorow + g * dv_pad;
          typename Vec::reg sv = Vec::zero(), dpv = Vec::zero();
          for (int64_t d = 0; d < D; ++d)
            sv = Vec::fma(Vec::set1(qg[d]), Vec::load(kt + d * L), sv);
          for (int64_t e = 0; e < Dv; ++e)
            dpv = Vec::fma(Vec::set1(dog[e]), Vec::load(vt + e * L), dpv);
          float s[L], dp[L];
          Vec::store(s, sv);
          Vec::store(dp, dpv);
          for (int64_t c = 0; c < nk; ++c) {
            const int64_t n = n0 + c, j = keys[n];
            if (j < 0 || (w != nullptr && w[n / bs] <= 0.0f)) continue;
            const float en = std::exp(p.scale * s[c] - lse[g]);
            const float pn = (w ? w[n / bs] : 1.0f) * en;
            if (gr.maybe_dweights != nullptr)
              gr.maybe_dweights[p.list_row(row) * K + n / bs] += en * (dp[c] - di[g]);
            const float ds = p.scale * pn * (dp[c] - di[g]);
            // dq += scale dS k ; dk += scale dS q ; dv += p dO
            const typename Vec::reg vds = Vec::set1(ds), vp = Vec::set1(pn);
            const float* kd = kblock + c * d_pad;
            float* dqg = dqrow + g * d_pad;
            int64_t d = 0;
            for (; d + L <= D; d += L) {
              Vec::store(dqg + d, Vec::fma(vds, Vec::load(kd + d), Vec::load(dqg + d)));
              Vec::store(dk_base + j * D + d,
                         Vec::fma(vds, Vec::load(qg + d), Vec::load(dk_base + j * D + d)));
            }
            for (; d < D; ++d) {
              dqg[d] += ds * kd[d];
              dk_base[j * D + d] += ds * qg[d];
            }
            int64_t e = 0;
            for (; e + L <= Dv; e += L) {
              Vec::store(dv_base + j * Dv + e,
                         Vec::fma(vp, Vec::load(dog + e), Vec::load(dv_base + j * Dv + e)));
            }
            for (; e < Dv; ++e) dv_base[j * Dv + e] += pn * dog[e];
          }
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* dst = gr.dq + ((b * Hq + hkv * G + g) * Tq + i) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = dqrow[g * d_pad + d];
      }
    }
  });

  // dK, dV = sum of the per-thread copies.
  const int64_t nk = B * Hkv * Tkv * D, nv = B * Hkv * Tkv * Dv;
  at::parallel_for(0, nk + nv, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float sum = 0.0f;
      for (int t = 0; t < num_threads; ++t) sum += slab[per_thread * t + f_rows + f_blocks + n];
      if (n < nk) {
        gr.dk[n] = sum;
      } else {
        gr.dv[n - nk] = sum;
      }
    }
  });
}
