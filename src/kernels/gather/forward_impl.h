// SIMD gather-attention forward, written against the vector traits `Vec` of the including ISA
// translation unit (avx512.cpp / avx2.cpp), inside its namespace. One work item is one query
// position i of (b, kv head): each listed key row is loaded once and dotted with all G query
// heads of the group, then its value row is accumulated into all G output rows.

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

static void gather_forward_impl(const GatherParams& p) {
  const int64_t Hq = p.num_heads_q, Hkv = p.num_heads_kv, G = Hq / Hkv, Tq = p.seq_len_q;
  const int64_t K = p.num_keys, D = p.head_dim, Dv = p.head_dim_v;
  const int64_t d_pad = round_up_lanes(D), dv_pad = round_up_lanes(Dv);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // Per-thread scratch: G query rows, G x K scores, G output rows, one key and one value row.
  const int64_t per_thread = G * d_pad + G * K + G * dv_pad + d_pad + dv_pad + 2 * G;
  const int num_threads = at::get_num_threads();
  std::vector<float> slab(static_cast<size_t>(per_thread * num_threads));

  // Grain 16 rows: a row is K x (D + Dv) x G FMAs, far above the scheduling cost.
  at::parallel_for(0, p.batch_size * Hkv * Tq, 16, [&](int64_t begin, int64_t end) {
    float* qrow = slab.data() + per_thread * at::get_thread_num();
    float* s = qrow + G * d_pad;
    float* o = s + G * K;
    float* krow = o + G * dv_pad;
    float* vrow = krow + d_pad;
    float* m = vrow + dv_pad;  // [G] row max
    float* l = m + G;          // [G] row denominator
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (Hkv * Tq), hkv = (row / Tq) % Hkv, i = row % Tq;
      const int64_t* idx = p.indices + row * K;
      const float* w = p.maybe_weights ? p.maybe_weights + row * K : nullptr;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hkv * G + g;
        load_row(p.q, p.dtype, b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t, p.q_stride_d,
                 D, d_pad, qrow + g * d_pad);
      }
      // s[g, n] = scale * q_g . k[idx_n]
      for (int64_t n = 0; n < K; ++n) {
        if (idx[n] < 0 || (w != nullptr && w[n] <= 0.0f)) {
          for (int64_t g = 0; g < G; ++g) s[g * K + n] = kNegInf;
          continue;
        }
        load_row(p.k, p.dtype, b * p.k_stride_b + hkv * p.k_stride_h + idx[n] * p.k_stride_t,
                 p.k_stride_d, D, d_pad, krow);
        for (int64_t g = 0; g < G; ++g) {
          typename Vec::reg acc = Vec::zero();
          for (int64_t d = 0; d < d_pad; d += Vec::kLanes) {
            acc = Vec::fma(Vec::load(qrow + g * d_pad + d), Vec::load(krow + d), acc);
          }
          s[g * K + n] = p.scale * Vec::reduce_add(acc);
        }
      }
      // p[g, n] = w_n exp(s - m) (in place), l = sum p
      for (int64_t g = 0; g < G; ++g) {
        float mg = kNegInf;
        for (int64_t n = 0; n < K; ++n) mg = std::max(mg, s[g * K + n]);
        float lg = 0.0f;
        for (int64_t n = 0; n < K; ++n) {
          const float pn = mg == kNegInf || s[g * K + n] == kNegInf
                               ? 0.0f
                               : (w ? w[n] : 1.0f) * std::exp(s[g * K + n] - mg);
          s[g * K + n] = pn;
          lg += pn;
        }
        m[g] = mg;
        l[g] = lg;
        fill_floats(o + g * dv_pad, o + (g + 1) * dv_pad, 0.0f);
      }
      // o[g] += p[g, n] v[idx_n]
      for (int64_t n = 0; n < K; ++n) {
        if (idx[n] < 0) continue;
        bool any = false;
        for (int64_t g = 0; g < G; ++g) any = any || s[g * K + n] != 0.0f;
        if (!any) continue;
        load_row(p.v, p.dtype, b * p.v_stride_b + hkv * p.v_stride_h + idx[n] * p.v_stride_t,
                 p.v_stride_d, Dv, dv_pad, vrow);
        for (int64_t g = 0; g < G; ++g) {
          const typename Vec::reg pv = Vec::set1(s[g * K + n]);
          float* og = o + g * dv_pad;
          for (int64_t e = 0; e < dv_pad; e += Vec::kLanes) {
            Vec::store(og + e, Vec::fma(pv, Vec::load(vrow + e), Vec::load(og + e)));
          }
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const int64_t out_row = (b * Hq + hkv * G + g) * Tq + i;
        const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;
        for (int64_t e = 0; e < Dv; ++e) {
          flash::store_elem(p.out, p.dtype, out_row * Dv + e, o[g * dv_pad + e] * inv);
        }
        p.lse[out_row] = l[g] > 0.0f ? m[g] + std::log(l[g]) : kNegInf;
      }
    }
  });
}
