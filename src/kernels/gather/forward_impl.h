// SIMD gather-attention forward, written against the vector traits `Vec` of the including ISA
// translation unit (avx512.cpp / avx2.cpp), inside its namespace. One work item is one query
// position i of (b, kv head): each listed key row is loaded once and dotted with all G query
// heads of the group, then its value row is accumulated into all G output rows. A head's sink
// logit, when given, is folded into its row's max and denominator at the end.

static inline int64_t round_up_lanes(int64_t n) {
  return (n + Vec::kLanes - 1) / Vec::kLanes * Vec::kLanes;
}

// dst[0:n] = fp32 row at element offset `off` with stride `stride`; dst[n:n_pad] = 0.
static inline void load_row(const void* base,
                            FlashDtype dtype,
                            int64_t off,
                            int64_t stride,
                            int64_t n,
                            int64_t n_pad,
                            float* dst) {
  int64_t e = 0;
  if (stride == 1 && dtype == FlashDtype::kFloat32) {
    const float* src = static_cast<const float*>(base) + off;
    for (; e + Vec::kLanes <= n; e += Vec::kLanes) Vec::store(dst + e, Vec::load(src + e));
  } else if (stride == 1) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + off;
    for (; e + Vec::kLanes <= n; e += Vec::kLanes) Vec::store(dst + e, Vec::load_bf16(src + e));
  }
  for (; e < n; ++e) dst[e] = flash::load_elem(base, dtype, off + e * stride);
  for (; e < n_pad; ++e) dst[e] = 0.0f;
}

// Folds a sink logit into a row's (max m, denominator l):
//   m' <- max(m, sink) ; l' <- l exp(m - m') + exp(sink - m')
// and returns exp(m - m'), the factor the accumulator (weighted by exp(s - m)) must be scaled by.
// -inf on either side contributes nothing (and never gives -inf - -inf).
static inline float fold_sink(float sink, float& m, float& l) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const float m_new = std::max(m, sink);
  if (m_new == kNegInf) return 0.0f;
  const float factor = m == kNegInf ? 0.0f : std::exp(m - m_new);
  l = l * factor + (sink == kNegInf ? 0.0f : std::exp(sink - m_new));
  m = m_new;
  return factor;
}

static void gather_forward_impl(const GatherParams& p) {
  const int64_t Hq = p.num_heads_q, Hkv = p.num_heads_kv, G = Hq / Hkv, Tq = p.seq_len_q;
  const int64_t K = p.num_keys, D = p.head_dim, Dv = p.head_dim_v;
  const int64_t d_pad = round_up_lanes(D), dv_pad = round_up_lanes(Dv);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // fp32 rows with unit stride and whole vectors are read in place; others are widened into
  // scratch first.
  const bool k_in_place =
      p.dtype == FlashDtype::kFloat32 && p.k_stride_d == 1 && D % Vec::kLanes == 0;
  const bool v_in_place =
      p.dtype == FlashDtype::kFloat32 && p.v_stride_d == 1 && Dv % Vec::kLanes == 0;
  // Per-thread scratch: G query rows, G x K scores, G output rows, a block of kLanes key rows,
  // the accumulator tile and its transpose, one value row, a zero row, row max and denominator.
  const int64_t per_thread = G * d_pad + G * K + G * dv_pad + Vec::kLanes * d_pad +
                             2 * Vec::kLanes * Vec::kLanes + dv_pad + d_pad + 2 * G;
  const int num_threads = at::get_num_threads();
  std::vector<float> slab(static_cast<size_t>(per_thread * num_threads));

  // Grain 16 rows: a row is K x (D + Dv) x G FMAs, far above the scheduling cost.
  at::parallel_for(0, p.batch_size * Hkv * Tq, 16, [&](int64_t begin, int64_t end) {
    float* qrow = slab.data() + per_thread * at::get_thread_num();
    float* s = qrow + G * d_pad;
    float* o = s + G * K;
    float* kblock = o + G * dv_pad;
    float* kt = kblock + Vec::kLanes * d_pad;
    float* vrow = kt + 2 * Vec::kLanes * Vec::kLanes;
    float* zero_row = vrow + dv_pad;
    fill_floats(zero_row, zero_row + d_pad, 0.0f);
    float* m = zero_row + d_pad;  // [G] row max
    float* l = m + G;             // [G] row denominator
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (Hkv * Tq), hkv = (row / Tq) % Hkv, i = row % Tq;
      const int64_t* idx = p.indices + p.list_row(row) * K;
      const float* w = p.maybe_weights ? p.maybe_weights + p.list_row(row) * K : nullptr;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hkv * G + g;
        load_row(p.q, p.dtype, b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t, p.q_stride_d,
                 D, d_pad, qrow + g * d_pad);
      }
      // s[g, n] = scale * q_g . k[idx_n], kLanes keys at a time: one accumulator vector per key
      // (D / kLanes FMAs on the key row read in place), then the kLanes accumulators are
      // transposed and summed so the kLanes scores come out as one vector.
      for (int64_t n0 = 0; n0 < K; n0 += Vec::kLanes) {
        const int64_t nk = std::min<int64_t>(Vec::kLanes, K - n0);
        const float* rows[Vec::kLanes];
        for (int64_t c = 0; c < Vec::kLanes; ++c) {
          const int64_t n = n0 + c;
          rows[c] = zero_row;
          if (c < nk && idx[n] >= 0) {
            const int64_t off = b * p.k_stride_b + hkv * p.k_stride_h + idx[n] * p.k_stride_t;
            if (k_in_place) {
              rows[c] = static_cast<const float*>(p.k) + off;
            } else {
              load_row(p.k, p.dtype, off, p.k_stride_d, D, d_pad, kblock + c * d_pad);
              rows[c] = kblock + c * d_pad;
            }
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qrow + g * d_pad;
          typename Vec::reg acc[Vec::kLanes];
          for (int c = 0; c < Vec::kLanes; ++c) acc[c] = Vec::zero();
          for (int64_t d = 0; d < d_pad; d += Vec::kLanes) {
            const typename Vec::reg qv = Vec::load(qg + d);
            for (int c = 0; c < Vec::kLanes; ++c)
              acc[c] = Vec::fma(qv, Vec::load(rows[c] + d), acc[c]);
          }
          for (int c = 0; c < Vec::kLanes; ++c) Vec::store(kt + c * Vec::kLanes, acc[c]);
          Vec::transpose_block(kt, Vec::kLanes, kt + Vec::kLanes * Vec::kLanes, Vec::kLanes);
          typename Vec::reg sum = Vec::zero();
          for (int c = 0; c < Vec::kLanes; ++c)
            sum = Vec::add(sum, Vec::load(kt + (Vec::kLanes + c) * Vec::kLanes));
          float tmp[Vec::kLanes];
          Vec::store(tmp, sum);
          for (int64_t c = 0; c < nk; ++c) {
            const int64_t n = n0 + c;
            const bool usable = idx[n] >= 0 && (w == nullptr || w[n] > 0.0f);
            s[g * K + n] = usable ? p.scale * tmp[c] : kNegInf;
          }
        }
      }
      // p[g, n] = w_n exp(s - m) (in place), l = sum p
      for (int64_t g = 0; g < G; ++g) {
        float* sg = s + g * K;
        const int64_t k_vec = K / Vec::kLanes * Vec::kLanes;
        typename Vec::reg vmax = Vec::set1(kNegInf);
        for (int64_t n = 0; n < k_vec; n += Vec::kLanes) vmax = Vec::max(vmax, Vec::load(sg + n));
        float mg = Vec::reduce_max(vmax);
        for (int64_t n = k_vec; n < K; ++n) mg = std::max(mg, sg[n]);
        float lg = 0.0f;
        if (mg == kNegInf) {
          fill_floats(sg, sg + K, 0.0f);
        } else {
          // exp(-inf - m) = 0 for unused slots; weights multiply the numerators.
          const typename Vec::reg vm = Vec::set1(mg);
          typename Vec::reg vsum = Vec::zero();
          for (int64_t n = 0; n < k_vec; n += Vec::kLanes) {
            typename Vec::reg e = Vec::exp(Vec::sub(Vec::load(sg + n), vm));
            if (w != nullptr) e = Vec::mul(e, Vec::load(w + n));
            Vec::store(sg + n, e);
            vsum = Vec::add(vsum, e);
          }
          lg = Vec::reduce_add(vsum);
          for (int64_t n = k_vec; n < K; ++n) {
            const float pn = sg[n] == kNegInf ? 0.0f : (w ? w[n] : 1.0f) * std::exp(sg[n] - mg);
            sg[n] = pn;
            lg += pn;
          }
        }
        m[g] = mg;
        l[g] = lg;
        fill_floats(o + g * dv_pad, o + (g + 1) * dv_pad, 0.0f);
      }
      // o[g] += p[g, n] v[idx_n], value rows read in place (or widened once per key).
      for (int64_t n = 0; n < K; ++n) {
        if (idx[n] < 0) continue;
        bool any = false;
        for (int64_t g = 0; g < G; ++g) any = any || s[g * K + n] != 0.0f;
        if (!any) continue;
        const int64_t off = b * p.v_stride_b + hkv * p.v_stride_h + idx[n] * p.v_stride_t;
        const float* vr = static_cast<const float*>(p.v) + off;
        if (!v_in_place) {
          load_row(p.v, p.dtype, off, p.v_stride_d, Dv, dv_pad, vrow);
          vr = vrow;
        }
        for (int64_t g = 0; g < G; ++g) {
          const typename Vec::reg pv = Vec::set1(s[g * K + n]);
          float* og = o + g * dv_pad;
          for (int64_t e = 0; e < dv_pad; e += Vec::kLanes) {
            Vec::store(og + e, Vec::fma(pv, Vec::load(vr + e), Vec::load(og + e)));
          }
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hkv * G + g, out_row = (b * Hq + h) * Tq + i;
        const float factor = p.maybe_sinks ? fold_sink(p.maybe_sinks[h], m[g], l[g]) : 1.0f;
        const float inv = l[g] > 0.0f ? factor / l[g] : 0.0f;
        for (int64_t e = 0; e < Dv; ++e) {
          flash::store_elem(p.out, p.dtype, out_row * Dv + e, o[g * dv_pad + e] * inv);
        }
        p.lse[out_row] = l[g] > 0.0f ? m[g] + std::log(l[g]) : kNegInf;
      }
    }
  });
}
