// SIMD gather-attention forward, written against the vector traits `Vec` of the including ISA
// translation unit (avx512.cpp / avx2.cpp), inside its namespace. One work item is a block of
// queries of one (b, kv head); it walks the keys in chunks (online softmax across chunks), and
// each listed key row is loaded once per query and dotted with all G query heads of the group,
// then its value row is accumulated into all G output rows. A head's sink logit, when given, is
// folded into its row's max and denominator at the end.

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

// acc[g, 0:NV*L] += sum_n p[g, n] v[keys[n] * stride + 0:NV*L] for GB heads g (rows p_stride
// and acc_stride apart) sharing the list: GB x NV accumulators stay in registers, and each
// value vector loaded serves the GB heads.
template <int GB, int NV>
static inline void pv_segment(const float* v,
                              int64_t stride,
                              const int32_t* keys,
                              int64_t n_seg,
                              const float* p,
                              int64_t p_stride,
                              float* acc,
                              int64_t acc_stride) {
  typename Vec::reg a[GB][NV];
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < NV; ++c) a[g][c] = Vec::load(acc + g * acc_stride + c * Vec::kLanes);
  for (int64_t n = 0; n < n_seg; ++n) {
    const float* row = v + keys[n] * stride;
    typename Vec::reg pv[GB];
    for (int g = 0; g < GB; ++g) pv[g] = Vec::set1(p[g * p_stride + n]);
    for (int c = 0; c < NV; ++c) {
      const typename Vec::reg x = Vec::load(row + c * Vec::kLanes);
      for (int g = 0; g < GB; ++g) a[g][c] = Vec::fma(pv[g], x, a[g][c]);
    }
  }
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < NV; ++c) Vec::store(acc + g * acc_stride + c * Vec::kLanes, a[g][c]);
}

// pv_segment over Dv channels for GB heads, as many vectors at a time as the registers hold.
template <int GB>
static inline void pv_heads(const float* v,
                            int64_t stride,
                            const int32_t* keys,
                            int64_t n_seg,
                            const float* p,
                            int64_t p_stride,
                            float* acc,
                            int64_t acc_stride,
                            int64_t Dv) {
  constexpr int NV = GB == 1 ? 8 : (Vec::kLanes == 16 ? 16 : 8) / GB;  // registers: 32 or 16
  constexpr int L = Vec::kLanes;
  int64_t e = 0;
  for (; e + NV * L <= Dv; e += NV * L)
    pv_segment<GB, NV>(v + e, stride, keys, n_seg, p, p_stride, acc + e, acc_stride);
  for (; e < Dv; e += L)
    pv_segment<GB, 1>(v + e, stride, keys, n_seg, p, p_stride, acc + e, acc_stride);
}

// s[g * s_stride + c] = scale * q_g . krows[c] for L keys and GB heads (q rows d_pad apart)
// that share the list. Not inlined: inlined, it costs the caller's single-head loop registers.
// KB = L / GB keys at a time: GB x KB accumulator vectors (each key vector loaded serves the GB
// heads, each q vector the KB keys), reduced for all of them by one shuffle-and-add tree.
template <int GB>
__attribute__((noinline)) static void qk_heads(const float* q,
                                               int64_t d_pad,
                                               const float* const* krows,
                                               float scale,
                                               float* s,
                                               int64_t s_stride) {
  constexpr int L = Vec::kLanes, KB = L / GB;
  for (int k0 = 0; k0 < L; k0 += KB) {
    // dot[Vec::sum_slot(g * KB + c)]: the (head g, key k0 + c) partial sums, so that lane
    // g * KB + c of the tree's result holds their total.
    typename Vec::reg dot[L];
    for (int c = 0; c < L; ++c) dot[c] = Vec::zero();
    for (int64_t d = 0; d < d_pad; d += L) {
      typename Vec::reg qv[GB];
      for (int g = 0; g < GB; ++g) qv[g] = Vec::load(q + g * d_pad + d);
      for (int c = 0; c < KB; ++c) {
        const typename Vec::reg kv = Vec::load(krows[k0 + c] + d);
        for (int g = 0; g < GB; ++g) {
          typename Vec::reg& acc = dot[Vec::sum_slot(g * KB + c)];
          acc = Vec::fma(qv[g], kv, acc);
        }
      }
    }
    const typename Vec::reg sum = Vec::mul(Vec::sum_lanes(dot), Vec::set1(scale));
    if (GB == 1) {
      Vec::store(s, sum);
    } else {
      alignas(64) float out[L];
      Vec::store(out, sum);
      for (int g = 0; g < GB; ++g)
        for (int c = 0; c < KB; ++c) s[g * s_stride + k0 + c] = out[g * KB + c];
    }
  }
}

// s[n] = scale * q . k_rows[keys[n] * stride] for n < n_keys, one head of ND vectors: q stays in
// registers over the segment and each key row is dotted whole, so no row pointers are held
// (qk_heads keeps L of them live, more than the registers hold). A last partial vector of keys
// repeats its last key (an L1 hit) and writes s up to the next whole vector.
template <int ND>
__attribute__((noinline)) static void qk_segment(const float* q,
                                                 const float* k_rows,
                                                 int64_t stride,
                                                 const int32_t* keys,
                                                 int64_t n_keys,
                                                 float scale,
                                                 float* s) {
  constexpr int L = Vec::kLanes;
  typename Vec::reg qv[ND];
  for (int e = 0; e < ND; ++e) qv[e] = Vec::load(q + e * L);
  int32_t tail[L];
  for (int64_t n0 = 0; n0 < n_keys; n0 += L) {
    const int32_t* kk = keys + n0;
    if (n_keys - n0 < L) {
      for (int c = 0; c < L; ++c) tail[c] = kk[std::min<int64_t>(c, n_keys - n0 - 1)];
      kk = tail;
    }
    typename Vec::reg dot[L];  // dot[Vec::sum_slot(c)]: key n0 + c
    for (int c = 0; c < L; ++c) {
      const float* row = k_rows + kk[c] * stride;
      typename Vec::reg a = Vec::mul(qv[0], Vec::load(row));
      for (int e = 1; e < ND; ++e) a = Vec::fma(qv[e], Vec::load(row + e * L), a);
      dot[Vec::sum_slot(c)] = a;
    }
    Vec::store(s + n0, Vec::mul(Vec::sum_lanes(dot), Vec::set1(scale)));
  }
}

// f(std::integral_constant<int, ND>) for nd in [ND, 8]; false (f not called) otherwise.
template <int ND = 1, class F>
static inline bool with_vector_count(int64_t nd, F&& f) {
  if (nd == ND) {
    f(std::integral_constant<int, ND>{});
    return true;
  }
  if constexpr (ND < 8) return with_vector_count<ND + 1>(nd, f);
  return false;
}

// One segment of a row's online softmax: s[0:n] (scores, room for a whole last vector) becomes
// p_n = w_n exp(s_n - m'), the row's max m and denominator l advance, and its accumulator
// acc[0:dv_pad] is rescaled by exp(m - m'), ready for acc += p V.
static inline void softmax_segment(
    float* s, int64_t n, const float* w, float& m, float& l, float* acc, int64_t dv_pad) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr int L = Vec::kLanes;
  // Segment max by vectors: the tail lanes past n are set to -inf first.
  fill_floats(s + n, s + (n + L - 1) / L * L, kNegInf);
  typename Vec::reg vmax = Vec::set1(kNegInf);
  for (int64_t j = 0; j < n; j += L) vmax = Vec::max(vmax, Vec::load(s + j));
  const float m_new = std::max(m, Vec::reduce_max(vmax));
  const float alpha = m == kNegInf ? 0.0f : std::exp(m - m_new);
  if (alpha != 1.0f) {
    const typename Vec::reg va = Vec::set1(alpha);
    for (int64_t e = 0; e < dv_pad; e += L) Vec::store(acc + e, Vec::mul(va, Vec::load(acc + e)));
  }
  const typename Vec::reg vm = Vec::set1(m_new);
  typename Vec::reg vsum = Vec::zero();
  for (int64_t j = 0; j < n; j += L) {
    typename Vec::reg e = Vec::exp(Vec::sub(Vec::load(s + j), vm));
    if (w != nullptr) e = Vec::mul(e, Vec::load(w + j));
    Vec::store(s + j, e);
    if (j + L > n) {  // the tail lanes are past the segment: drop them
      for (int64_t c = n - j; c < L; ++c) s[j + c] = 0.0f;
      e = Vec::load(s + j);
    }
    vsum = Vec::add(vsum, e);
  }
  l = l * alpha + Vec::reduce_add(vsum);
  m = m_new;
}

// f(std::integral_constant<int, GB>, g) over the heads [0, G) of a group: 4 at a time, then 2,
// then 1, the widths of qk_heads and pv_heads.
template <class F>
static inline void for_head_groups(int64_t G, F&& f) {
  int64_t g = 0;
  for (; g + 4 <= G; g += 4) f(std::integral_constant<int, 4>{}, g);
  for (; g + 2 <= G; g += 2) f(std::integral_constant<int, 2>{}, g);
  for (; g < G; ++g) f(std::integral_constant<int, 1>{}, g);
}

// The rows of k or v of one (b, kv head): read in place when fp32 with unit stride and whole
// vectors, otherwise widened into scratch.
struct Rows {
  const void* base = nullptr;
  FlashDtype dtype = FlashDtype::kFloat32;
  int64_t off = 0, stride_t = 0, stride_d = 1, dim = 0, dim_pad = 0;
  const float* in_place = nullptr;  // row j at in_place + j * stride_t, or null

  Rows(const void* base_,
       FlashDtype dtype_,
       int64_t off_,
       int64_t stride_t_,
       int64_t stride_d_,
       int64_t dim_)
      : base(base_),
        dtype(dtype_),
        off(off_),
        stride_t(stride_t_),
        stride_d(stride_d_),
        dim(dim_),
        dim_pad(round_up_lanes(dim_)) {
    if (dtype == FlashDtype::kFloat32 && stride_d == 1 && dim % Vec::kLanes == 0)
      in_place = static_cast<const float*>(base) + off;
  }
  /// Row j as dim_pad floats: in place, or widened into scratch.
  const float* row(int64_t j, float* scratch) const {
    if (in_place != nullptr) return in_place + j * stride_t;
    load_row(base, dtype, off + j * stride_t, stride_d, dim, dim_pad, scratch);
    return scratch;
  }
};

// s[g * s_stride + n] = scale * x_g . rows[keys[n]] for n < n_seg and the G rows x_g (dim_pad
// apart); whole vectors of keys are written, up to L - 1 places past n_seg. One row read in
// place: qk_segment; otherwise L keys at a time by qk_heads (widened rows in `block`, L rows of
// dim_pad; `zero_row` pads the last vector).
static void dot_rows(const float* x,
                     int64_t G,
                     const Rows& rows,
                     const int32_t* keys,
                     int64_t n_seg,
                     float scale,
                     float* s,
                     int64_t s_stride,
                     float* block,
                     const float* zero_row) {
  constexpr int L = Vec::kLanes;
  if (G == 1 && rows.in_place != nullptr && with_vector_count(rows.dim_pad / L, [&](auto nd) {
        qk_segment<decltype(nd)::value>(x, rows.in_place, rows.stride_t, keys, n_seg, scale, s);
      }))
    return;
  for (int64_t n0 = 0; n0 < n_seg; n0 += L) {
    const int64_t nk = std::min<int64_t>(L, n_seg - n0);
    const float* r[L];
    for (int64_t c = 0; c < L; ++c)
      r[c] = c < nk ? rows.row(keys[n0 + c], block + c * rows.dim_pad) : zero_row;
    for_head_groups(G, [&](auto gb, int64_t g) {
      qk_heads<decltype(gb)::value>(x + g * rows.dim_pad, rows.dim_pad, r, scale,
                                    s + g * s_stride + n0, s_stride);
    });
  }
}

// The k and v rows of batch b, kv head hkv.
static inline Rows key_rows(const GatherParams& p, int64_t b, int64_t hkv) {
  return Rows(p.k, p.dtype, b * p.k_stride_b + hkv * p.k_stride_h, p.k_stride_t, p.k_stride_d,
              p.head_dim);
}
static inline Rows value_rows(const GatherParams& p, int64_t b, int64_t hkv) {
  return Rows(p.v, p.dtype, b * p.v_stride_b + hkv * p.v_stride_h, p.v_stride_t, p.v_stride_d,
              p.head_dim_v);
}

// acc[g * acc_stride + 0:dim_pad] += sum_n c[g * c_stride + n] rows[keys[n]] for n < n_seg and
// G rows of acc. In place, pv_heads keeps the accumulators in registers over the segment;
// widened rows go through `scratch` one key at a time.
static void accumulate_rows(const Rows& rows,
                            const int32_t* keys,
                            int64_t n_seg,
                            int64_t G,
                            const float* c,
                            int64_t c_stride,
                            float* acc,
                            int64_t acc_stride,
                            float* scratch) {
  if (rows.in_place != nullptr) {
    for_head_groups(G, [&](auto gb, int64_t g) {
      pv_heads<decltype(gb)::value>(rows.in_place, rows.stride_t, keys, n_seg, c + g * c_stride,
                                    c_stride, acc + g * acc_stride, acc_stride, rows.dim);
    });
    return;
  }
  for (int64_t n = 0; n < n_seg; ++n) {
    const float* r = rows.row(keys[n], scratch);
    for (int64_t g = 0; g < G; ++g) {
      const typename Vec::reg cv = Vec::set1(c[g * c_stride + n]);
      float* ag = acc + g * acc_stride;
      for (int64_t e = 0; e < rows.dim_pad; e += Vec::kLanes)
        Vec::store(ag + e, Vec::fma(cv, Vec::load(r + e), Vec::load(ag + e)));
    }
  }
}

// The usable list entries of queries i0 + qi (qi < nq, list rows from first_row on), bucketed
// by chunk of 2^chunk_shift keys: a counting sort, order inside a chunk is the list order.
// Query qi's slot n holds keys[qi * K + n] (K = p.slots()) and, when given, the entry's weight
// (weights) and index in the list (entries); chunk c's slots are [st[c], st[c + 1]) with
// st = starts + qi * (num_chunks + 1).
static void bucket_lists(const GatherParams& p,
                         int64_t first_row,
                         int64_t i0,
                         int64_t nq,
                         int chunk_shift,
                         int64_t num_chunks,
                         int32_t* keys,
                         float* weights,
                         int32_t* entries,
                         int64_t* starts) {
  const int64_t K = p.slots(), E = p.num_keys, bs = p.block_size;
  for (int64_t qi = 0; qi < nq; ++qi) {
    const int64_t row = first_row + qi;
    const float* w = p.maybe_weights ? p.maybe_weights + row * E : nullptr;
    const int64_t key_end = p.key_end(i0 + qi);
    // The keys [lo, hi) of entry n: its block, cut at the row's end; empty when unused.
    auto range = [&](int64_t n, int64_t& lo, int64_t& hi) {
      const int64_t entry = p.index(row, n);
      lo = entry * bs;
      hi = entry < 0 || (w != nullptr && w[n] <= 0.0f) ? lo : std::min(lo + bs, key_end);
    };
    int64_t* st = starts + qi * (num_chunks + 1);
    std::fill(st, st + num_chunks + 1, int64_t{0});
    int64_t lo, hi;
    for (int64_t n = 0; n < E; ++n) {
      range(n, lo, hi);
      for (int64_t j = lo; j < hi; ++j) ++st[(j >> chunk_shift) + 1];
    }
    for (int64_t c = 0; c < num_chunks; ++c) st[c + 1] += st[c];
    int64_t* fill = st;  // reuse: st[c] advances while filling, then is restored below
    for (int64_t n = 0; n < E; ++n) {
      range(n, lo, hi);
      for (int64_t j = lo; j < hi; ++j) {
        const int64_t slot = qi * K + fill[j >> chunk_shift]++;
        keys[slot] = static_cast<int32_t>(j);
        if (weights != nullptr) weights[slot] = w[n];
        if (entries != nullptr) entries[slot] = static_cast<int32_t>(n);
      }
    }
    // fill[c] now holds the end of chunk c = the start of chunk c + 1: shift back.
    for (int64_t c = num_chunks; c > 0; --c) st[c] = st[c - 1];
    st[0] = 0;
  }
}

// The shift of a chunk: a power of two of at least min_keys, and about L keys per query and
// chunk for short lists (a segment has fixed costs).
static inline int chunk_shift_for(const GatherParams& p, int64_t min_keys) {
  int shift = 0;
  while ((int64_t{1} << shift) <
         std::max(min_keys, Vec::kLanes * p.seq_len_kv / std::max<int64_t>(1, p.slots())))
    ++shift;
  return shift;
}

// Queries per work item: enough for each key of a chunk to be listed about kUsesPerKey times
// (queries x K / Tkv), within [64, 2048], and at least 4 items per thread.
static inline int64_t queries_per_item(const GatherParams& p, int num_threads) {
  constexpr int64_t kUsesPerKey = 64;
  const int64_t Tq = p.seq_len_q;
  return std::max<int64_t>(
      1,
      std::min(
          {Tq, (p.batch_size * p.num_heads_kv * Tq + 4 * num_threads - 1) / (4 * num_threads),
           std::min<int64_t>(2048, std::max<int64_t>(64, kUsesPerKey * p.seq_len_kv /
                                                             std::max<int64_t>(1, p.slots())))}));
}

// A work item: queries [i0, i0 + nq) of batch b and kv head hkv. Items run (b, query block,
// kv head) with the head innermost, so the heads of a shared list reuse its bucketing; the
// query blocks zig-zag, so that contiguous ranges of items carry equal causal work.
struct Item {
  int64_t b, hkv, i0, nq;
};
static inline Item item_at(
    int64_t item, int64_t Hkv, int64_t num_q_blocks, int64_t QB, int64_t Tq) {
  const int64_t bt = item / Hkv, t = bt % num_q_blocks;
  const int64_t qb = (t % 2 == 0) ? t / 2 : num_q_blocks - 1 - t / 2;
  return {bt / num_q_blocks, item % Hkv, qb * QB, std::min(QB, Tq - qb * QB)};
}

// f(qi, n0, n_seg) for each query qi < nq and its segment of the chunk, slots [n0, n0 + n_seg)
// of its bucketed list (bucket_lists' starts), chunk by chunk.
template <class F>
static inline void for_segments(const int64_t* starts, int64_t nq, int64_t num_chunks, F&& f) {
  for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
    for (int64_t qi = 0; qi < nq; ++qi) {
      const int64_t* st = starts + qi * (num_chunks + 1);
      if (st[chunk + 1] > st[chunk]) f(qi, st[chunk], st[chunk + 1] - st[chunk]);
    }
  }
}

// The forward's work items and chunks. A work item (queries_per_item queries of one kv head)
// walks the key axis chunk by chunk and, per chunk, serves every query of the item its listed
// keys in that chunk: the chunk's K and V rows (512 x (D + Dv) floats = 512 KB at D = Dv = 128)
// are fetched from memory once and reused from L2 by all the queries that list them, instead of
// once per query. At T = 16K that made top-256 1.7x and top-2048 1.35x faster than items of 64K
// list entries.
constexpr int64_t kMinChunkKeys = 512;

static void gather_forward_impl(const GatherParams& p) {
  const int64_t Hq = p.num_heads_q, Hkv = p.num_heads_kv, G = Hq / Hkv, Tq = p.seq_len_q;
  const int64_t K = p.slots();  // slots per list row (entries x block size)
  const int64_t D = p.head_dim, Dv = p.head_dim_v;
  const int64_t d_pad = round_up_lanes(D), dv_pad = round_up_lanes(Dv);
  const int num_threads = at::get_num_threads();
  const int64_t QB = queries_per_item(p, num_threads);
  const int64_t num_q_blocks = (Tq + QB - 1) / QB;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr int L = Vec::kLanes;
  const int chunk_shift = chunk_shift_for(p, kMinChunkKeys);
  const int64_t num_chunks = (p.seq_len_kv >> chunk_shift) + 1;
  // Per-thread scratch (floats): the item's query rows and accumulators, row max and denominator,
  // scores of one segment, a block of L key rows, one value row, a zero row, and each query's
  // list bucketed by chunk: keys (int32, to keep the lists small next to the chunk's rows in
  // L2), weights when given, chunk starts.
  const int64_t rows = QB * G;
  const int64_t f_weights = p.maybe_weights ? QB * K + L : 0;
  const int64_t f_per_thread = rows * d_pad + rows * dv_pad + 2 * rows + G * (K + L) + L * d_pad +
                               dv_pad + d_pad + f_weights;
  const int64_t i_per_thread = QB * (num_chunks + 1);
  std::vector<float> slab(static_cast<size_t>(f_per_thread * num_threads));
  std::vector<int32_t> kslab(static_cast<size_t>(QB * K * num_threads));
  std::vector<int64_t> islab(static_cast<size_t>(i_per_thread * num_threads));

  at::parallel_for(0, p.batch_size * num_q_blocks * Hkv, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* qrows = slab.data() + f_per_thread * tid;  // [QB, G, d_pad]
    float* acc = qrows + rows * d_pad;                // [QB, G, dv_pad]
    float* m = acc + rows * dv_pad;                   // [QB, G]
    float* l = m + rows;                              // [QB, G]
    float* s = l + rows;                              // [G, K + L]
    float* kblock = s + G * (K + L);
    float* vrow = kblock + L * d_pad;
    float* zero_row = vrow + dv_pad;
    float* wsorted = zero_row + d_pad;               // [QB, K] (+ L: vector tail reads) or none
    int32_t* ksorted = kslab.data() + QB * K * tid;  // [QB, K]
    int64_t* starts = islab.data() + i_per_thread * tid;  // [QB, num_chunks + 1]
    fill_floats(zero_row, zero_row + d_pad, 0.0f);
    int64_t bucketed = -1;  // the list row block now in ksorted (shared lists: reused by heads)

    for (int64_t item = begin; item < end; ++item) {
      const Item it = item_at(item, Hkv, num_q_blocks, QB, Tq);
      const int64_t b = it.b, hkv = it.hkv, i0 = it.i0, nq = it.nq;
      const Rows krows = key_rows(p, b, hkv), vrows = value_rows(p, b, hkv);

      // Per query: q rows and a fresh softmax state.
      for (int64_t qi = 0; qi < nq; ++qi) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = hkv * G + g;
          load_row(p.q, p.dtype, b * p.q_stride_b + h * p.q_stride_h + (i0 + qi) * p.q_stride_t,
                   p.q_stride_d, D, d_pad, qrows + (qi * G + g) * d_pad);
          m[qi * G + g] = kNegInf;
          l[qi * G + g] = 0.0f;
        }
        fill_floats(acc + qi * G * dv_pad, acc + (qi + 1) * G * dv_pad, 0.0f);
      }
      const int64_t first_row = p.list_row((b * Hkv + hkv) * Tq + i0);
      if (first_row != bucketed) {
        bucket_lists(p, first_row, i0, nq, chunk_shift, num_chunks, ksorted,
                     p.maybe_weights ? wsorted : nullptr, nullptr, starts);
        bucketed = first_row;
      }

      for_segments(starts, nq, num_chunks, [&](int64_t qi, int64_t n0, int64_t n_seg) {
        const int32_t* keys = ksorted + qi * K + n0;
        const float* wk = p.maybe_weights ? wsorted + qi * K + n0 : nullptr;
        // s[g, n] = scale * q_g . k[keys_n]; then the online softmax over the segment,
        // p_n = w_n exp(s_n - m'), acc <- acc e^(m - m') + p V.
        dot_rows(qrows + qi * G * d_pad, G, krows, keys, n_seg, p.scale, s, K + L, kblock,
                 zero_row);
        for (int64_t g = 0; g < G; ++g) {
          softmax_segment(s + g * (K + L), n_seg, wk, m[qi * G + g], l[qi * G + g],
                          acc + (qi * G + g) * dv_pad, dv_pad);
        }
        accumulate_rows(vrows, keys, n_seg, G, s, K + L, acc + qi * G * dv_pad, dv_pad, vrow);
      });

      for (int64_t qi = 0; qi < nq; ++qi) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = hkv * G + g, out_row = (b * Hq + h) * Tq + i0 + qi;
          float& mg = m[qi * G + g];
          float& lg = l[qi * G + g];
          const float factor = p.maybe_sinks ? fold_sink(p.maybe_sinks[h], mg, lg) : 1.0f;
          const float inv = lg > 0.0f ? factor / lg : 0.0f;
          const float* ag = acc + (qi * G + g) * dv_pad;
          for (int64_t e = 0; e < Dv; ++e)
            flash::store_elem(p.out, p.dtype, out_row * Dv + e, ag[e] * inv);
          p.lse[out_row] = lg > 0.0f ? mg + std::log(lg) : kNegInf;
        }
      }
    }
  });
}
