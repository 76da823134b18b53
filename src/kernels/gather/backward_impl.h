// SIMD gather-attention backward (recompute from the saved lse), included after forward_impl.h
// by the ISA translation units, whose helpers it shares. Work items and chunks are the
// forward's: an item is a block of queries of one kv head, bucketed by chunk of keys, and the
// chunk's K, V, dK and dV rows stay in L2 while every query of the item serves the ones it
// lists. dK and dV rows can be hit by any item, so each thread accumulates into its own fp32
// copies, summed at the end (deterministic, no atomics). Per query segment and head g:
//   forward: s = scale q.k ; e = exp(s - lse) ; p = w e ; out = sum p v
//   dP = dO . v ;  dS = p (dP - Di) ;  dw += e (dP - Di) (summed over the G heads)
//   dq += scale dS k ;  dk += scale dS q ;  dv += p dO

// dst[keys[n] * ld + 0:ND L] += c[n] x for n < n_seg, one row x of ND vectors held in
// registers.
template <int ND>
__attribute__((noinline)) static void scatter_add_row(
    float* dst, int64_t ld, const int32_t* keys, int64_t n_seg, const float* c, const float* x) {
  constexpr int L = Vec::kLanes;
  typename Vec::reg xv[ND];
  for (int e = 0; e < ND; ++e) xv[e] = Vec::load(x + e * L);
  for (int64_t n = 0; n < n_seg; ++n) {
    float* row = dst + keys[n] * ld;
    const typename Vec::reg cv = Vec::set1(c[n]);
    for (int e = 0; e < ND; ++e)
      Vec::store(row + e * L, Vec::fma(cv, xv[e], Vec::load(row + e * L)));
  }
}

// dst[keys[n] * ld + 0:dim_pad] += sum_g c[g * c_stride + n] x[g * dim_pad + 0:dim_pad] for
// n < n_seg, over the G rows x (each row of dst read and written once per key).
static void scatter_add_rows(float* dst,
                             int64_t ld,
                             const int32_t* keys,
                             int64_t n_seg,
                             int64_t G,
                             const float* c,
                             int64_t c_stride,
                             const float* x,
                             int64_t dim_pad) {
  constexpr int L = Vec::kLanes;
  if (G == 1 && with_vector_count(dim_pad / L, [&](auto nd) {
        scatter_add_row<decltype(nd)::value>(dst, ld, keys, n_seg, c, x);
      }))
    return;
  for (int64_t n = 0; n < n_seg; ++n) {
    float* row = dst + keys[n] * ld;
    for (int64_t e = 0; e < dim_pad; e += L) {
      typename Vec::reg a = Vec::load(row + e);
      for (int64_t g = 0; g < G; ++g)
        a = Vec::fma(Vec::set1(c[g * c_stride + n]), Vec::load(x + g * dim_pad + e), a);
      Vec::store(row + e, a);
    }
  }
}

// The backward's least keys per chunk: a chunk's K, V, dK and dV rows (4 x 256 x 512 B at
// D = Dv = 128) share L2.
constexpr int64_t kMinChunkKeysBackward = 256;

static void gather_backward_impl(const GatherParams& p, const GatherBackwardParams& gr) {
  const int64_t B = p.batch_size, Hq = p.num_heads_q, Hkv = p.num_heads_kv, G = Hq / Hkv;
  const int64_t Tq = p.seq_len_q, Tkv = p.seq_len_kv, K = p.slots(), E = p.num_keys;
  const int64_t D = p.head_dim, Dv = p.head_dim_v;
  const int64_t d_pad = round_up_lanes(D), dv_pad = round_up_lanes(Dv);
  const int64_t pad = std::max(d_pad, dv_pad);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr int64_t L = Vec::kLanes;
  const int num_threads = at::get_num_threads();
  const int64_t QB = queries_per_item(p, num_threads);
  const int64_t num_q_blocks = (Tq + QB - 1) / QB;
  const int chunk_shift = chunk_shift_for(p, kMinChunkKeysBackward);
  const int64_t num_chunks = (Tkv >> chunk_shift) + 1;
  const bool need_entries = gr.maybe_dweights != nullptr;
  // Per-thread scratch (floats): the item's q, dO and dq rows, lse and Di, a segment's scores
  // and dP (then p and dS), a block of L widened rows, one row, a zero row, the weights of
  // the bucketed lists; the dK and dV copies (rows padded to whole vectors). Ints: the bucketed
  // keys, their list entries (for the weight gradient), chunk starts.
  const int64_t rows = QB * G;
  const int64_t f_weights = p.maybe_weights ? QB * K + L : 0;
  const int64_t f_rows =
      rows * (2 * d_pad + dv_pad) + 2 * rows + 2 * G * (K + L) + L * pad + 2 * pad + f_weights;
  const int64_t f_kv = B * Hkv * Tkv * (d_pad + dv_pad);
  const int64_t per_thread = f_rows + f_kv;
  const int64_t i_per_thread = QB * (num_chunks + 1);
  std::vector<float> slab(static_cast<size_t>(per_thread * num_threads), 0.0f);
  std::vector<int32_t> kslab(static_cast<size_t>(QB * K * num_threads));
  std::vector<int32_t> eslab(static_cast<size_t>(need_entries ? QB * K * num_threads : 0));
  std::vector<int64_t> islab(static_cast<size_t>(i_per_thread * num_threads));

  at::parallel_for(0, B * num_q_blocks * Hkv, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* qrows = slab.data() + per_thread * tid;  // [QB, G, d_pad]
    float* dqrows = qrows + rows * d_pad;           // [QB, G, d_pad]
    float* dorows = dqrows + rows * d_pad;          // [QB, G, dv_pad]
    float* lse = dorows + rows * dv_pad;            // [QB, G]
    float* di = lse + rows;                         // [QB, G]
    float* s = di + rows;                           // [G, K + L]: scores, then p
    float* dp = s + G * (K + L);                    // [G, K + L]: dP, then dS
    float* block = dp + G * (K + L);                // [L, pad]
    float* row_scratch = block + L * pad;
    float* zero_row = row_scratch + pad;
    float* wsorted = zero_row + pad;                           // [QB, K] (+ L) or none
    float* dk_copy = slab.data() + per_thread * tid + f_rows;  // [B, Hkv, Tkv, d_pad]
    float* dv_copy = dk_copy + B * Hkv * Tkv * d_pad;          // [B, Hkv, Tkv, dv_pad]
    int32_t* ksorted = kslab.data() + QB * K * tid;            // [QB, K]
    int32_t* esorted = need_entries ? eslab.data() + QB * K * tid : nullptr;
    int64_t* starts = islab.data() + i_per_thread * tid;  // [QB, num_chunks + 1]
    fill_floats(zero_row, zero_row + pad, 0.0f);
    int64_t bucketed = -1;  // the list row block now in ksorted (shared lists: reused by heads)

    for (int64_t item = begin; item < end; ++item) {
      const Item it = item_at(item, Hkv, num_q_blocks, QB, Tq);
      const int64_t b = it.b, hkv = it.hkv, i0 = it.i0, nq = it.nq;
      const Rows krows = key_rows(p, b, hkv), vrows = value_rows(p, b, hkv);
      float* dk_base = dk_copy + (b * Hkv + hkv) * Tkv * d_pad;
      float* dv_base = dv_copy + (b * Hkv + hkv) * Tkv * dv_pad;

      // Per query and head: q, dO, lse, Di = dO . O, and dq = 0.
      for (int64_t qi = 0; qi < nq; ++qi) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = hkv * G + g, out_row = (b * Hq + h) * Tq + i0 + qi, r = qi * G + g;
          load_row(p.q, p.dtype, b * p.q_stride_b + h * p.q_stride_h + (i0 + qi) * p.q_stride_t,
                   p.q_stride_d, D, d_pad, qrows + r * d_pad);
          load_row(gr.dout, p.dtype, out_row * Dv, 1, Dv, dv_pad, dorows + r * dv_pad);
          lse[r] = p.lse[out_row];
          float sum = 0.0f;
          for (int64_t e = 0; e < Dv; ++e)
            sum += dorows[r * dv_pad + e] * flash::load_elem(p.out, p.dtype, out_row * Dv + e);
          di[r] = sum;
          fill_floats(dqrows + r * d_pad, dqrows + (r + 1) * d_pad, 0.0f);
        }
      }
      const int64_t first_row = p.list_row((b * Hkv + hkv) * Tq + i0);
      if (first_row != bucketed) {
        bucket_lists(p, first_row, i0, nq, chunk_shift, num_chunks, ksorted,
                     p.maybe_weights ? wsorted : nullptr, esorted, starts);
        bucketed = first_row;
      }

      for_segments(starts, nq, num_chunks, [&](int64_t qi, int64_t n0, int64_t n_seg) {
        const int32_t* keys = ksorted + qi * K + n0;
        const float* wk = p.maybe_weights ? wsorted + qi * K + n0 : nullptr;
        const float* qq = qrows + qi * G * d_pad;
        const float* doq = dorows + qi * G * dv_pad;
        // s = scale q . k and dP = dO . v, for the G heads
        dot_rows(qq, G, krows, keys, n_seg, p.scale, s, K + L, block, zero_row);
        dot_rows(doq, G, vrows, keys, n_seg, 1.0f, dp, K + L, block, zero_row);
        // s <- p = w e, dp <- scale dS = scale p (dP - Di), e = exp(s - lse); a row without
        // an lse (no usable key) has p = 0.
        for (int64_t g = 0; g < G; ++g) {
          const int64_t r = qi * G + g;
          float* sg = s + g * (K + L);
          float* dpg = dp + g * (K + L);
          if (lse[r] == kNegInf) {
            fill_floats(sg, sg + n_seg, 0.0f);
            fill_floats(dpg, dpg + n_seg, 0.0f);
            continue;
          }
          const typename Vec::reg vlse = Vec::set1(lse[r]), vdi = Vec::set1(di[r]);
          const typename Vec::reg vscale = Vec::set1(p.scale);
          for (int64_t n = 0; n < n_seg; n += L) {
            const typename Vec::reg e = Vec::exp(Vec::sub(Vec::load(sg + n), vlse));
            const typename Vec::reg dt = Vec::sub(Vec::load(dpg + n), vdi);
            if (need_entries) {  // dw[entry] += e (dP - Di), summed over the heads
              alignas(64) float ed[L];
              Vec::store(ed, Vec::mul(e, dt));
              float* dw = gr.maybe_dweights + (first_row + qi) * E;
              const int32_t* ent = esorted + qi * K + n0 + n;
              for (int64_t c = 0; c < std::min<int64_t>(L, n_seg - n); ++c) dw[ent[c]] += ed[c];
            }
            const typename Vec::reg pw = wk ? Vec::mul(e, Vec::load(wk + n)) : e;
            Vec::store(sg + n, pw);
            Vec::store(dpg + n, Vec::mul(vscale, Vec::mul(pw, dt)));
          }
        }
        // dq_g += scale dS k ; dk += scale dS q ; dv += p dO
        accumulate_rows(krows, keys, n_seg, G, dp, K + L, dqrows + qi * G * d_pad, d_pad,
                        row_scratch);
        scatter_add_rows(dk_base, d_pad, keys, n_seg, G, dp, K + L, qq, d_pad);
        scatter_add_rows(dv_base, dv_pad, keys, n_seg, G, s, K + L, doq, dv_pad);
      });

      for (int64_t qi = 0; qi < nq; ++qi) {
        for (int64_t g = 0; g < G; ++g) {
          const float* src = dqrows + (qi * G + g) * d_pad;
          float* dst = gr.dq + ((b * Hq + hkv * G + g) * Tq + i0 + qi) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = src[d];
        }
      }
    }
  });

  // dK, dV = the sums of the per-thread copies (rows padded to d_pad / dv_pad).
  const int64_t n_rows = B * Hkv * Tkv;
  at::parallel_for(0, n_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t d = 0; d < D; ++d) {
        float sum = 0.0f;
        for (int t = 0; t < num_threads; ++t) sum += slab[per_thread * t + f_rows + r * d_pad + d];
        gr.dk[r * D + d] = sum;
      }
      for (int64_t e = 0; e < Dv; ++e) {
        float sum = 0.0f;
        for (int t = 0; t < num_threads; ++t)
          sum += slab[per_thread * t + f_rows + n_rows * d_pad + r * dv_pad + e];
        gr.dv[r * Dv + e] = sum;
      }
    }
  });
}
