// The SIMD flash-attention backward (FlashAttention-2 style: recompute P from the saved lse),
// included by avx512.cpp / avx2.cpp after forward_impl.h, inside their ISA namespace.
//
// One work item is (b, kv head, kv tile of kBlockK keys); it owns dK and dV of those keys and
// walks every query block that can see them (all G query heads of the group stacked as rows,
// as in the forward). Per (query block, kv tile), with Qs = scale Q:
//   S   <- Qs Kt ; S <- softcap, ALiBi, bias, masks       (forward: s = mods(scale q.k))
//   P   <- exp(S - lse)                                  (forward: P = softmax(S))
//   dP  <- dO Vt                                         (forward: O = P V)
//   dS  <- P (dP - Di) [* (1 - tanh^2) under softcap]    (Di = rowsum(dO * O))
//   dV  <- dV + P^T dO ;  dK <- dK + dS^T Qs ;  dQ <- dQ + dS (scale K)
// dQ rows are shared between kv tiles: each thread accumulates into its own fp32 dQ copy, and
// the copies are summed at the end (deterministic, no atomics).

// C[0:4, 0:C*L] (+)= A[0:4, 0:kdim] B[0:kdim, 0:C*L]; A(r, kk) = a[r * lda + kk * a_cs] (so
// a transposed operand needs no copy: lda = 1, a_cs = its row stride), B, C leading dims ldb, ldc.
template <int C>
static inline void gemm_micro(const float* a,
                              int64_t lda,
                              int64_t a_cs,
                              const float* b,
                              int64_t ldb,
                              float* c,
                              int64_t ldc,
                              int64_t kdim,
                              bool accumulate) {
  typename Vec::reg acc[kRowBlock][C];
  for (int r = 0; r < kRowBlock; ++r)
    for (int j = 0; j < C; ++j)
      acc[r][j] = accumulate ? Vec::load(c + r * ldc + j * Vec::kLanes) : Vec::zero();
  for (int64_t kk = 0; kk < kdim; ++kk) {
    typename Vec::reg bv[C];
    for (int j = 0; j < C; ++j) bv[j] = Vec::load(b + kk * ldb + j * Vec::kLanes);
    for (int r = 0; r < kRowBlock; ++r) {
      const typename Vec::reg av = Vec::set1(a[r * lda + kk * a_cs]);
      for (int j = 0; j < C; ++j) acc[r][j] = Vec::fma(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < kRowBlock; ++r)
    for (int j = 0; j < C; ++j) Vec::store(c + r * ldc + j * Vec::kLanes, acc[r][j]);
}

// C[m_pad, n_pad] (+)= A[m_pad, kdim] B[kdim, n_pad]; m_pad % 4 == 0, n_pad % kLanes == 0.
static void gemm(const float* a,
                 int64_t lda,
                 int64_t a_cs,
                 const float* b,
                 int64_t ldb,
                 float* c,
                 int64_t ldc,
                 int64_t m_pad,
                 int64_t n_pad,
                 int64_t kdim,
                 bool accumulate) {
  const int64_t nvec = n_pad / Vec::kLanes;
  for (int64_t r = 0; r < m_pad; r += kRowBlock) {
    for (int64_t cv = 0; cv < nvec; cv += Vec::kColVecs) {
      const int64_t col = cv * Vec::kLanes;
      const float* ar = a + r * lda;
      float* cr = c + r * ldc + col;
      switch (std::min<int64_t>(Vec::kColVecs, nvec - cv)) {
        case 1:
          gemm_micro<1>(ar, lda, a_cs, b + col, ldb, cr, ldc, kdim, accumulate);
          break;
        case 2:
          gemm_micro<2>(ar, lda, a_cs, b + col, ldb, cr, ldc, kdim, accumulate);
          break;
        case 3:
          gemm_micro<3>(ar, lda, a_cs, b + col, ldb, cr, ldc, kdim, accumulate);
          break;
        default:
          gemm_micro<Vec::kColVecs>(ar, lda, a_cs, b + col, ldb, cr, ldc, kdim, accumulate);
          break;
      }
    }
  }
}

static void backward_impl(const FlashParams& p, const FlashBackwardParams& g) {
  // Sizes.
  const int64_t B = p.batch_size, Hq = p.num_heads_q, Hkv = p.num_heads_kv;
  const int64_t Tq = p.seq_len_q, Tkv = p.seq_len_kv, D = p.head_dim, Dv = p.head_dim_v;
  const int64_t G = Hq / Hkv;
  const int64_t d_pad = round_up(D, Vec::kLanes), dv_pad = round_up(Dv, Vec::kLanes);
  const int64_t rows_q =
      p.has_block_mask() ? p.block_q : std::min(Tq, std::max<int64_t>(1, kRowsPerTile / G));
  const int64_t num_q_blocks = ceil_div(Tq, rows_q);
  const int64_t num_kv_tiles = ceil_div(Tkv, kBlockK);
  const int64_t rows_pad = round_up(G * rows_q, kRowBlock);
  const int64_t num_kv_blocks = p.has_block_mask() ? p.num_kv_blocks : 0;
  const bool element_mods = has_element_mods(p);
  const bool use_mask_row = p.maybe_mask_row != nullptr;
  const int num_threads = at::get_num_threads();

  // Di = rowsum(dO * O) for every query row, fp32 [B, Hq, Tq].
  std::vector<float> di(static_cast<size_t>(B * Hq * Tq));
  at::parallel_for(0, B * Hq * Tq, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (Hq * Tq), h = (row / Tq) % Hq, i = row % Tq;
      const int64_t o_off = b * p.out_stride_b + h * p.out_stride_h + i * p.out_stride_t;
      const int64_t d_off = b * g.dout_stride_b + h * g.dout_stride_h + i * g.dout_stride_t;
      float sum = 0.0f;
      for (int64_t e = 0; e < Dv; ++e) {
        sum += load_elem(p.out, p.dtype, o_off + e * p.out_stride_d) *
               load_elem(g.dout, p.dtype, d_off + e * g.dout_stride_d);
      }
      di[row] = sum;
    }
  });

  // Query-block panels, packed once for every kv tile that visits them (O(T * D) memory):
  // scale * Q [rows_pad, d_pad], dO [rows_pad, dv_pad], lse and Di [rows_pad] per block, rows
  // stacked head-major as in the forward; padded rows have lse = -inf (P = 0).
  const int64_t num_blocks = B * Hkv * num_q_blocks;
  std::vector<float> q_panels(static_cast<size_t>(num_blocks * rows_pad * d_pad));
  std::vector<float> do_panels(static_cast<size_t>(num_blocks * rows_pad * dv_pad));
  std::vector<float> lse_panels(static_cast<size_t>(num_blocks * rows_pad));
  std::vector<float> di_panels(static_cast<size_t>(num_blocks * rows_pad));
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b = blk / (Hkv * num_q_blocks), hkv = (blk / num_q_blocks) % Hkv;
      const int64_t i0 = (blk % num_q_blocks) * rows_q, nq = std::min(rows_q, Tq - i0);
      float* qs = q_panels.data() + blk * rows_pad * d_pad;
      float* dos = do_panels.data() + blk * rows_pad * dv_pad;
      float* lse = lse_panels.data() + blk * rows_pad;
      float* dis = di_panels.data() + blk * rows_pad;
      fill_floats(qs, qs + rows_pad * d_pad, 0.0f);
      fill_floats(dos, dos + rows_pad * dv_pad, 0.0f);
      fill_floats(lse, lse + rows_pad, kNegInf);
      fill_floats(dis, dis + rows_pad, 0.0f);
      for (int64_t r = 0; r < G * nq; ++r) {
        const int64_t h = hkv * G + r / nq, i = i0 + r % nq;
        const int64_t q_off = b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t;
        const int64_t d_off = b * g.dout_stride_b + h * g.dout_stride_h + i * g.dout_stride_t;
        for (int64_t d = 0; d < D; ++d) {
          qs[r * d_pad + d] = p.scale * load_elem(p.q, p.dtype, q_off + d * p.q_stride_d);
        }
        for (int64_t e = 0; e < Dv; ++e) {
          dos[r * dv_pad + e] = load_elem(g.dout, p.dtype, d_off + e * g.dout_stride_d);
        }
        lse[r] = p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i * p.lse_stride_t];
        dis[r] = di[(b * Hq + h) * Tq + i];
      }
    }
  });

  // Scratch, per thread: kv-tile panels, tile products, and a private fp32 dQ [B*Hq*Tq, D].
  auto pad16 = [](int64_t n) { return round_up(n, 16); };
  const int64_t f_kt = pad16(D * kBlockK), f_vt = pad16(Dv * kBlockK);
  const int64_t f_kr = pad16(kBlockK * d_pad), f_dk = pad16(kBlockK * d_pad);
  const int64_t f_dv = pad16(kBlockK * dv_pad), f_s = pad16(rows_pad * kBlockK);
  const int64_t f_dp = pad16(rows_pad * kBlockK), f_sd = pad16(rows_pad * kBlockK);
  const int64_t f_dqt = pad16(rows_pad * d_pad);
  const int64_t f_modes = pad16(ceil_div(G * num_kv_blocks, 4));
  const int64_t f_dq = pad16(B * Hq * Tq * D);
  const int64_t per_thread =
      f_kt + f_vt + f_kr + f_dk + f_dv + f_s + f_dp + f_sd + f_dqt + f_modes + f_dq;
  std::unique_ptr<float, void (*)(void*)> slab(
      static_cast<float*>(std::aligned_alloc(64, sizeof(float) * per_thread * num_threads)),
      std::free);
  TORCH_INTERNAL_ASSERT(slab != nullptr, "flash_backward: scratch allocation failed");
  for (int t = 0; t < num_threads; ++t) {
    float* dq_t = slab.get() + per_thread * t + (per_thread - f_dq);
    fill_floats(dq_t, dq_t + B * Hq * Tq * D, 0.0f);
  }

  // One item per (b, kv head, kv tile), grain 1; kv tiles in zig-zag order (causal balance).
  at::parallel_for(0, B * Hkv * num_kv_tiles, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* base = slab.get() + per_thread * tid;
    float* kt = base;
    float* vt = kt + f_kt;
    float* kr = vt + f_vt;
    float* dk_acc = kr + f_kr;
    float* dv_acc = dk_acc + f_dk;
    float* s = dv_acc + f_dv;
    float* dp = s + f_s;
    float* sd = dp + f_dp;
    float* dqt = sd + f_sd;
    uint8_t* modes = reinterpret_cast<uint8_t*>(dqt + f_dqt);
    float* dq_t = base + (per_thread - f_dq);

    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / num_kv_tiles, t = item % num_kv_tiles;
      const int64_t kt_idx = (t % 2 == 0) ? t / 2 : num_kv_tiles - 1 - t / 2;
      const int64_t b = bh / Hkv, hkv = bh % Hkv;
      const int64_t j0 = kt_idx * kBlockK, j1 = std::min(Tkv, j0 + kBlockK);
      const int64_t width = j1 - j0, width_pad = round_up(width, Vec::kLanes);
      const int64_t width4 = round_up(width, kRowBlock);
      const int64_t k_off = b * p.k_stride_b + hkv * p.k_stride_h;
      const int64_t v_off = b * p.v_stride_b + hkv * p.v_stride_h;

      // Pack K^T, V^T [*, kBlockK] and scale * K [kBlockK, d_pad]; zero the dK, dV panels.
      pack_key_tile(p, k_off, j0, width, kt);
      for (int64_t d = 0; d < D; ++d)
        fill_floats(kt + d * kBlockK + width, kt + d * kBlockK + width_pad, 0.0f);
      fill_floats(kr, kr + kBlockK * d_pad, 0.0f);
      for (int64_t c = 0; c < width; ++c) {
        const int64_t ko = k_off + (j0 + c) * p.k_stride_t;
        const int64_t vo = v_off + (j0 + c) * p.v_stride_t;
        for (int64_t d = 0; d < D; ++d)
          kr[c * d_pad + d] = p.scale * load_elem(p.k, p.dtype, ko + d * p.k_stride_d);
        for (int64_t e = 0; e < Dv; ++e)
          vt[e * kBlockK + c] = load_elem(p.v, p.dtype, vo + e * p.v_stride_d);
      }
      for (int64_t e = 0; e < Dv; ++e)
        fill_floats(vt + e * kBlockK + width, vt + e * kBlockK + width_pad, 0.0f);
      fill_floats(dk_acc, dk_acc + kBlockK * d_pad, 0.0f);
      fill_floats(dv_acc, dv_acc + kBlockK * dv_pad, 0.0f);

      for (int64_t qb = 0; qb < num_q_blocks; ++qb) {
        const int64_t i0 = qb * rows_q, nq = std::min(rows_q, Tq - i0);
        const KeyRange first = key_range(p, i0), last = key_range(p, i0 + nq - 1);
        if (j1 <= first.lo || j0 >= last.hi) continue;  // no row of the block sees the tile
        if (p.has_block_mask()) {
          bool any = false;
          for (int64_t gg = 0; gg < G; ++gg) {
            uint8_t* m = modes + gg * num_kv_blocks;
            fill_block_modes(p, b, hkv * G + gg, qb, m);
            for (int64_t kb = j0 / p.block_k; kb <= (j1 - 1) / p.block_k; ++kb)
              any = any || m[kb] != kSkip;
          }
          if (!any) continue;
        }
        const int64_t rows = G * nq, rpad = round_up(rows, kRowBlock);

        const int64_t blk = (b * Hkv + hkv) * num_q_blocks + qb;
        const float* qs = q_panels.data() + blk * rows_pad * d_pad;
        const float* dos = do_panels.data() + blk * rows_pad * dv_pad;
        const float* row_lse = lse_panels.data() + blk * rows_pad;
        const float* row_di = di_panels.data() + blk * rows_pad;

        // S <- Qs Kt ; dP <- dO Vt
        gemm(qs, d_pad, 1, kt, kBlockK, s, kBlockK, rpad, width_pad, D, /*accumulate=*/false);
        gemm(dos, dv_pad, 1, vt, kBlockK, dp, kBlockK, rpad, width_pad, Dv, /*accumulate=*/false);

        const bool edge = !(j0 >= last.lo && j1 <= first.hi);
        for (int64_t r = 0; r < rpad; ++r) {
          float* sr = s + r * kBlockK;
          float* dpr = dp + r * kBlockK;
          if (r >= rows || row_lse[r] == kNegInf) {  // padded or fully masked row: P = dS = 0
            fill_floats(sr, sr + width_pad, 0.0f);
            fill_floats(dpr, dpr + width_pad, 0.0f);
            continue;
          }
          const int64_t gg = r / nq, i = i0 + r % nq, h = hkv * G + gg;
          float* sdr = sd + r * kBlockK;
          if (p.softcap > 0.0f) {
            // s <- c tanh(s / c); keep ds/draw = 1 - tanh^2 for the chain rule.
            const typename Vec::reg cap = Vec::set1(p.softcap), inv = Vec::set1(1.0f / p.softcap);
            const typename Vec::reg one = Vec::set1(1.0f);
            for (int64_t c = 0; c < width_pad; c += Vec::kLanes) {
              const typename Vec::reg th = Vec::tanh(Vec::mul(Vec::load(sr + c), inv));
              Vec::store(sr + c, Vec::mul(cap, th));
              Vec::store(sdr + c, Vec::sub(one, Vec::mul(th, th)));
            }
          }
          if (edge || element_mods || use_mask_row || p.has_block_mask()) {
            const uint8_t* m = p.has_block_mask() ? modes + gg * num_kv_blocks : nullptr;
            modify_row_blocks(p, b, h, i, j0, width, key_range(p, i), m, sr);
          }
          for (int64_t c = width; c < width_pad; ++c) sr[c] = kNegInf;
          // P <- exp(S - lse) ; dS <- P (dP - Di) [* softcap']
          const typename Vec::reg vl = Vec::set1(row_lse[r]), vd = Vec::set1(row_di[r]);
          for (int64_t c = 0; c < width_pad; c += Vec::kLanes) {
            const typename Vec::reg pv = Vec::exp(Vec::sub(Vec::load(sr + c), vl));
            Vec::store(sr + c, pv);
            typename Vec::reg ds = Vec::mul(pv, Vec::sub(Vec::load(dpr + c), vd));
            if (g.maybe_dbias != nullptr) {
              float tmp[Vec::kLanes];
              Vec::store(tmp, ds);
              float* dbias = g.maybe_dbias + ((b * Hq + h) * Tq + i) * Tkv + j0;
              for (int64_t l = 0; l < Vec::kLanes && c + l < width; ++l) dbias[c + l] = tmp[l];
            }
            if (p.softcap > 0.0f) ds = Vec::mul(ds, Vec::load(sdr + c));
            Vec::store(dpr + c, ds);
          }
        }

        // dV += P^T dO ; dK += dS^T Qs   (keys as rows: width4 of them, rpad inner)
        // (P^T and dS^T read in place: row stride 1, column stride kBlockK)
        gemm(s, 1, kBlockK, dos, dv_pad, dv_acc, dv_pad, width4, dv_pad, rpad, /*accumulate=*/true);
        gemm(dp, 1, kBlockK, qs, d_pad, dk_acc, d_pad, width4, d_pad, rpad, /*accumulate=*/true);
        // dQ += dS (scale K)
        gemm(dp, kBlockK, 1, kr, d_pad, dqt, d_pad, rpad, d_pad, width, /*accumulate=*/false);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t h = hkv * G + r / nq, i = i0 + r % nq;
          float* dst = dq_t + ((b * Hq + h) * Tq + i) * D;
          const float* src = dqt + r * d_pad;
          for (int64_t d = 0; d < D; ++d) dst[d] += src[d];
        }
      }

      // This item owns dK, dV of keys [j0, j1) of (b, kv head).
      float* dk = g.dk + ((b * Hkv + hkv) * Tkv + j0) * D;
      float* dv = g.dv + ((b * Hkv + hkv) * Tkv + j0) * Dv;
      for (int64_t c = 0; c < width; ++c) {
        for (int64_t d = 0; d < D; ++d) dk[c * D + d] = dk_acc[c * d_pad + d];
        for (int64_t e = 0; e < Dv; ++e) dv[c * Dv + e] = dv_acc[c * dv_pad + e];
      }
    }
  });

  // dQ = sum of the per-thread copies.
  at::parallel_for(0, B * Hq * Tq * D, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float sum = 0.0f;
      for (int t = 0; t < num_threads; ++t)
        sum += slab.get()[per_thread * t + (per_thread - f_dq) + n];
      g.dq[n] = sum;
    }
  });

  // Sinks: lse = log(sum_j exp s_j + exp sink)  =>  dL/dsink_h = -sum_{b,i} exp(sink - lse) Di
  if (g.maybe_dsinks != nullptr) {
    for (int64_t h = 0; h < Hq; ++h) {
      double sum = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < Tq; ++i) {
          const float lse = p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i * p.lse_stride_t];
          if (lse != kNegInf) sum -= std::exp(p.maybe_sinks[h] - lse) * di[(b * Hq + h) * Tq + i];
        }
      }
      g.maybe_dsinks[h] = static_cast<float>(sum);
    }
  }
}
