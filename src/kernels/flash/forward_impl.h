// The SIMD flash-attention forward, written once against a small vector-traits type `Vec` and
// compiled per ISA: avx512.cpp and avx2.cpp define `Vec` inside their own namespace and then
// include this file inside that namespace (no include guard, no includes: see those files).
//
// Algorithm (FlashAttention-2 forward, GQA-grouped): one work item is (b, kv head, q block).
// Its rows are the G query heads x rows_q queries that share the kv head, stacked head-major
// (r = g * rows_q + ii), so every K/V tile is loaded and packed once for all G heads. For each
// visited kv tile:
//   S  <- (scale Q) Kt                 [rows, Bk]   register-blocked 4 x (C vectors) micro-kernel
//   S  <- softcap, ALiBi, bias, score functor, masks (only where needed; functors per row segment)
//   m' <- max(m, rowmax S);  P <- exp(S - m');  l <- l exp(m - m') + rowsum P;  O <- O exp(m - m')
//   O  <- O + P V                      [rows, Dv]   register-blocked 4 x (C vectors) micro-kernel
// and at the end out <- O / l (sinks folded into m and l first), lse <- m + log l.
// Scale convention: natural log everywhere.

// Query rows per work item (all G heads together). 64 rows x Bk keys x D = 128 keeps the
// scaled-Q panel (32 KB), the S tile (16 KB) and the O panel (32 KB) in L2 while a packed K
// tile (D x Bk floats = 32 KB) is reused by 64 rows, so packing costs < 1% of the FLOPs.
constexpr int64_t kRowsPerTile = 64;

// kBlockK (keys per tile), kRowBlock and the QK micro-kernel qk_micro.
#include "kernels/cpu/qk_micro_impl.h"

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// O[0:4, 0:C*L] += P[0:4, 0:width] V[0:width, 0:C*L]; P stride kBlockK, V and O stride ldv.
template <int C>
static inline void pv_micro(
    const float* pr, int64_t width, const float* vs, int64_t ldv, float* o) {
  typename Vec::reg acc[kRowBlock][C];
  for (int r = 0; r < kRowBlock; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = Vec::load(o + r * ldv + c * Vec::kLanes);
  for (int64_t j = 0; j < width; ++j) {
    typename Vec::reg vv[C];
    for (int c = 0; c < C; ++c) vv[c] = Vec::load(vs + j * ldv + c * Vec::kLanes);
    for (int r = 0; r < kRowBlock; ++r) {
      const typename Vec::reg pv = Vec::set1(pr[r * kBlockK + j]);
      for (int c = 0; c < C; ++c) acc[r][c] = Vec::fma(pv, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < kRowBlock; ++r)
    for (int c = 0; c < C; ++c) Vec::store(o + r * ldv + c * Vec::kLanes, acc[r][c]);
}

// Columns [lo, hi) of a tile (whole vectors) that a block of kRowBlock rows needs: the union of
// its rows' visible keys. Triangular causal / window edge tiles skip the rest.
struct ColRange {
  int64_t lo = 0;
  int64_t hi = 0;
};

// S[r, cols[r / kRowBlock]] <- Q Kt for every block of kRowBlock rows, column chunks of up to
// kColVecs vectors; columns outside a block's range are left unwritten.
static void gemm_qk(const float* q,
                    int64_t rows_pad,
                    int64_t head_dim,
                    const float* kt,
                    const ColRange* cols,
                    float* s) {
  for (int64_t r = 0; r < rows_pad; r += kRowBlock) {
    const ColRange cr = cols[r / kRowBlock];
    for (int64_t col = cr.lo; col < cr.hi; col += Vec::kColVecs * Vec::kLanes) {
      const float* qr = q + r * head_dim;
      float* sr = s + r * kBlockK + col;
      switch (std::min<int64_t>(Vec::kColVecs, (cr.hi - col) / Vec::kLanes)) {
        case 1:
          qk_micro<1>(qr, head_dim, kt + col, sr);
          break;
        case 2:
          qk_micro<2>(qr, head_dim, kt + col, sr);
          break;
        case 3:
          qk_micro<3>(qr, head_dim, kt + col, sr);
          break;
        default:
          qk_micro<Vec::kColVecs>(qr, head_dim, kt + col, sr);
          break;
      }
    }
  }
}

// O[r, 0:dv_pad] += P[r, keys] Vs[keys, 0:dv_pad] for every block of kRowBlock rows, over the
// keys of its column range below `width` (P is zero elsewhere in the block's rows).
static void gemm_pv(const float* pm,
                    int64_t rows_pad,
                    int64_t width,
                    const ColRange* cols,
                    const float* vs,
                    int64_t dv_pad,
                    float* o) {
  const int64_t nvec = dv_pad / Vec::kLanes;
  for (int64_t r = 0; r < rows_pad; r += kRowBlock) {
    const ColRange cr = cols[r / kRowBlock];
    const int64_t keys = std::min(width, cr.hi) - cr.lo;
    if (keys <= 0) continue;
    const float* pr = pm + r * kBlockK + cr.lo;
    const float* vr = vs + cr.lo * dv_pad;
    for (int64_t cv = 0; cv < nvec; cv += Vec::kColVecs) {
      const int64_t col = cv * Vec::kLanes;
      float* orow = o + r * dv_pad + col;
      switch (std::min<int64_t>(Vec::kColVecs, nvec - cv)) {
        case 1:
          pv_micro<1>(pr, keys, vr + col, dv_pad, orow);
          break;
        case 2:
          pv_micro<2>(pr, keys, vr + col, dv_pad, orow);
          break;
        case 3:
          pv_micro<3>(pr, keys, vr + col, dv_pad, orow);
          break;
        default:
          pv_micro<Vec::kColVecs>(pr, keys, vr + col, dv_pad, orow);
          break;
      }
    }
  }
}

// kt[d, c] = k[b, hkv, j0 + c, d] for c < width (row stride kBlockK). fp32 keys with unit
// d-stride go through kLanes x kLanes in-register transposes; the rest element by element.
static void pack_key_tile(
    const FlashParams& p, int64_t k_off, int64_t j0, int64_t width, float* kt) {
  const int64_t D = p.head_dim;
  int64_t c_done = 0, d_done = 0;
  if (p.dtype == FlashDtype::kFloat32 && p.k_stride_d == 1) {
    const float* k = static_cast<const float*>(p.k) + k_off + j0 * p.k_stride_t;
    c_done = width / Vec::kLanes * Vec::kLanes;
    d_done = D / Vec::kLanes * Vec::kLanes;
    for (int64_t c = 0; c < c_done; c += Vec::kLanes) {
      for (int64_t d = 0; d < d_done; d += Vec::kLanes) {
        Vec::transpose_block(k + c * p.k_stride_t + d, p.k_stride_t, kt + d * kBlockK + c, kBlockK);
      }
    }
  }
  if (p.dtype == FlashDtype::kBFloat16 && p.k_stride_d == 1) {
    // Widen a kLanes x kLanes block to fp32, then transpose it like the fp32 path.
    const uint16_t* k = static_cast<const uint16_t*>(p.k) + k_off + j0 * p.k_stride_t;
    float block[Vec::kLanes * Vec::kLanes];
    c_done = width / Vec::kLanes * Vec::kLanes;
    d_done = D / Vec::kLanes * Vec::kLanes;
    for (int64_t c = 0; c < c_done; c += Vec::kLanes) {
      for (int64_t d = 0; d < d_done; d += Vec::kLanes) {
        for (int r = 0; r < Vec::kLanes; ++r) {
          Vec::store(block + r * Vec::kLanes, Vec::load_bf16(k + (c + r) * p.k_stride_t + d));
        }
        Vec::transpose_block(block, Vec::kLanes, kt + d * kBlockK + c, kBlockK);
      }
    }
  }
  // Remainders: keys past c_done (all d), and d past d_done for keys below c_done.
  for (int64_t c = 0; c < width; ++c) {
    const int64_t ko = k_off + (j0 + c) * p.k_stride_t;
    for (int64_t d = c < c_done ? d_done : 0; d < D; ++d) {
      kt[d * kBlockK + c] = load_elem(p.k, p.dtype, ko + d * p.k_stride_d);
    }
  }
}

// dst[0:n] = fp32(src[0:n]) for a unit-stride bf16 row.
static inline void widen_bf16_row(const uint16_t* src, int64_t n, float* dst) {
  int64_t e = 0;
  for (; e + Vec::kLanes <= n; e += Vec::kLanes) Vec::store(dst + e, Vec::load_bf16(src + e));
  for (; e < n; ++e) dst[e] = bf16_to_float(src[e]);
}

// Online-softmax state of one row: running max m, running denominator l; the accumulator
// row acc lives in the O panel.
struct SoftmaxState {
  float m = kNegInf;
  float l = 0.0f;

  // Folds one tile of logits s[0:n] (n a multiple of the vector width, masked entries -inf)
  // into the state; overwrites s with P = exp(s - m') and rescales acc[0:dv] by exp(m - m').
  void merge(float* s, int64_t n, float* acc, int64_t dv) {
    typename Vec::reg vmax = Vec::set1(kNegInf);
    for (int64_t c = 0; c < n; c += Vec::kLanes) vmax = Vec::max(vmax, Vec::load(s + c));
    const float m_new = std::max(m, Vec::reduce_max(vmax));
    if (m_new == kNegInf) {  // every key so far masked: P = 0, state unchanged
      for (int64_t c = 0; c < n; c += Vec::kLanes) Vec::store(s + c, Vec::zero());
      return;
    }
    const typename Vec::reg vm = Vec::set1(m_new);
    typename Vec::reg vsum = Vec::zero();
    for (int64_t c = 0; c < n; c += Vec::kLanes) {
      const typename Vec::reg e = Vec::exp(Vec::sub(Vec::load(s + c), vm));
      Vec::store(s + c, e);
      vsum = Vec::add(vsum, e);
    }
    const float alpha = m == kNegInf ? 0.0f : std::exp(m - m_new);
    if (alpha != 1.0f) {
      const typename Vec::reg va = Vec::set1(alpha);
      for (int64_t e = 0; e < dv; e += Vec::kLanes)
        Vec::store(acc + e, Vec::mul(Vec::load(acc + e), va));
    }
    l = l * alpha + Vec::reduce_add(vsum);
    m = m_new;
  }

  // Folds a sink logit into the state; returns the factor the accumulator must be scaled by.
  float fold_sink(float sink) {
    const float m_new = std::max(m, sink);
    const float alpha = m == kNegInf ? 0.0f : std::exp(m - m_new);
    l = l * alpha + std::exp(sink - m_new);
    m = m_new;
    return alpha;
  }

  // lse of the row: -inf when nothing was visible.
  float lse() const { return l > 0.0f ? m + std::log(l) : kNegInf; }
};

// Per-thread scratch, carved out of one buffer allocated before the parallel region.
// Packed K/V tiles kept per thread, and what each slot holds (bh = -1: nothing).
constexpr int kTileSlots = 8;
struct TileTag {
  int64_t bh = -1, j0 = -1, width = -1;
};

struct Scratch {
  float* q = nullptr;             // [rows_pad, D]      scaled query panel
  float* o = nullptr;             // [rows_pad, Dv_pad] output accumulator
  float* s = nullptr;             // [rows_pad, kBlockK] logits, then probabilities
  float* kt = nullptr;            // kTileSlots x [D, kBlockK]       packed, transposed key tiles
  float* vs = nullptr;            // kTileSlots x [kBlockK, Dv_pad]  packed value tiles
  SoftmaxState* state = nullptr;  // [rows_pad]
  ColRange* cols = nullptr;       // [rows_pad / kRowBlock] column range of each row block
  uint8_t* modes = nullptr;       // [G, num_kv_blocks] block-mask modes
};

// out[b, h, i, :] <- acc / l with the sink folded in; lse[b, h, i] <- m + log l.
static void finalize_row(
    const FlashParams& p, int64_t b, int64_t h, int64_t i, SoftmaxState st, const float* acc) {
  float factor = 1.0f;
  if (p.maybe_sinks != nullptr) factor = st.fold_sink(p.maybe_sinks[h]);
  const float inv = st.l > 0.0f ? factor / st.l : 0.0f;
  const int64_t out_off = b * p.out_stride_b + h * p.out_stride_h + i * p.out_stride_t;
  if (p.dtype == FlashDtype::kFloat32 && p.out_stride_d == 1) {
    float* dst = static_cast<float*>(p.out) + out_off;
    for (int64_t e = 0; e < p.head_dim_v; ++e) dst[e] = acc[e] * inv;
  } else {
    for (int64_t e = 0; e < p.head_dim_v; ++e) {
      store_elem(p.out, p.dtype, out_off + e * p.out_stride_d, acc[e] * inv);
    }
  }
  p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i * p.lse_stride_t] = st.lse();
}

static void forward_impl(const FlashParams& p) {
  // Sizes.
  const int64_t B = p.batch_size, Hq = p.num_heads_q, Hkv = p.num_heads_kv;
  const int64_t Tq = p.seq_len_q, Tkv = p.seq_len_kv, D = p.head_dim, Dv = p.head_dim_v;
  const int64_t G = Hq / Hkv;
  const int64_t dv_pad = round_up(Dv, Vec::kLanes);
  const int64_t rows_q =
      p.has_block_mask() ? p.block_q : std::min(Tq, std::max<int64_t>(1, kRowsPerTile / G));
  const int64_t num_q_blocks = ceil_div(Tq, rows_q);
  const int64_t rows_pad = round_up(G * rows_q, kRowBlock);
  const int64_t num_kv_blocks = p.has_block_mask() ? p.num_kv_blocks : 0;
  const bool element_mods = has_element_mods(p);
  const bool use_mask_row = p.maybe_mask_row != nullptr;

  // Scratch: one padded slab per thread (64-byte aligned pieces).
  auto pad16 = [](int64_t n) { return round_up(n, 16); };
  const int64_t floats_q = pad16(rows_pad * D), floats_o = pad16(rows_pad * dv_pad);
  const int64_t floats_s = pad16(rows_pad * kBlockK);
  const int64_t floats_kt = kTileSlots * pad16(D * kBlockK);
  const int64_t floats_vs = kTileSlots * pad16(kBlockK * dv_pad);
  const int64_t floats_state = pad16(rows_pad * 2);
  const int64_t floats_cols = pad16(rows_pad / kRowBlock * 4);  // two int64 per row block
  const int64_t floats_modes = pad16(ceil_div(G * num_kv_blocks, 4));
  const int64_t per_thread = floats_q + floats_o + floats_s + floats_kt + floats_vs + floats_state +
                             floats_cols + floats_modes;
  const int num_threads = at::get_num_threads();
  std::unique_ptr<float, void (*)(void*)> slab(
      static_cast<float*>(std::aligned_alloc(64, sizeof(float) * per_thread * num_threads)),
      std::free);
  TORCH_INTERNAL_ASSERT(slab != nullptr, "flash_forward: scratch allocation failed");

  // Split-KV (flash decoding): with fewer (b, kv head, q block) items than threads (decode,
  // small batches) each item's key range is cut into num_splits pieces processed in parallel;
  // their (m, l, acc) states are merged afterwards. Pieces of at least 4 tiles keep the merge
  // cheap. Not used with block masks.
  const int64_t base_items = B * Hkv * num_q_blocks;
  int64_t num_splits = 1;
  if (!p.has_block_mask() && base_items < num_threads) {
    num_splits = std::min(ceil_div(num_threads, base_items),
                          std::max<int64_t>(1, ceil_div(Tkv, kBlockK) / 4));
  }
  std::vector<float> part_o, part_state;
  if (num_splits > 1) {
    part_o.resize(static_cast<size_t>(base_items * num_splits * rows_pad * dv_pad));
    part_state.resize(static_cast<size_t>(base_items * num_splits * rows_pad * 2));
  }

  // One work item per (b, kv head, q block[, split]). The threads claim items one at a time
  // from a shared counter: on a machine shared with other work a descheduled thread no longer
  // holds back a fixed share of the items. Within one (b, kv head) the q blocks come last
  // first: under causal masks the largest items are claimed first (the threads finish
  // together), and consecutive items share most of their K/V tiles, still in cache (a window
  // of 256 keys visits 5 tiles per q block, 4 of them the previous block's).
  // A claim is up to 8 consecutive items (fewer when there are not 8 claims per thread, and 1
  // with split-KV), so one thread walks consecutive q blocks and their shared tiles stay in its
  // own L2: with single-item claims two threads alternate blocks and each reloads most tiles.
  const int64_t num_items = base_items * num_splits;
  const int64_t claim =
      num_splits > 1 ? 1
                     : std::max<int64_t>(1, std::min<int64_t>(8, num_items / (8 * num_threads)));
  std::atomic<int64_t> next_item{0};
  at::parallel_for(0, num_threads, 1, [&](int64_t, int64_t) {
    const int tid = at::get_thread_num();
    float* base = slab.get() + per_thread * tid;
    Scratch sc;
    sc.q = base;
    sc.o = sc.q + floats_q;
    sc.s = sc.o + floats_o;
    sc.kt = sc.s + floats_s;
    sc.vs = sc.kt + floats_kt;
    sc.state = reinterpret_cast<SoftmaxState*>(sc.vs + floats_vs);
    sc.cols = reinterpret_cast<ColRange*>(sc.vs + floats_vs + floats_state);
    sc.modes = reinterpret_cast<uint8_t*>(sc.vs + floats_vs + floats_state + floats_cols);
    TileTag tags[kTileSlots];
    int64_t next_slot = 0;

    for (int64_t first = next_item.fetch_add(claim); first < num_items;
         first = next_item.fetch_add(claim)) {
      for (int64_t item = first; item < std::min(num_items, first + claim); ++item) {
        const int64_t split = item % num_splits, base_item = item / num_splits;
        const int64_t bh = base_item / num_q_blocks, t = base_item % num_q_blocks;
        const int64_t qb = num_q_blocks - 1 - t;
        const int64_t b = bh / Hkv, hkv = bh % Hkv;
        const int64_t i0 = qb * rows_q;
        const int64_t nq = std::min(rows_q, Tq - i0);  // queries per head in this block
        const int64_t rows = G * nq;
        const int64_t rpad = round_up(rows, kRowBlock);

        // Pointers.
        const int64_t k_off = b * p.k_stride_b + hkv * p.k_stride_h;
        const int64_t v_off = b * p.v_stride_b + hkv * p.v_stride_h;

        // Q panel: Qs[r, d] = scale * q[b, h, i, d]; padded rows zero.
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t h = hkv * G + r / nq, i = i0 + r % nq;
          const int64_t off = b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t;
          float* dst = sc.q + r * D;
          if (p.dtype == FlashDtype::kFloat32 && p.q_stride_d == 1) {
            const float* src = static_cast<const float*>(p.q) + off;
            for (int64_t d = 0; d < D; ++d) dst[d] = p.scale * src[d];
          } else {
            for (int64_t d = 0; d < D; ++d)
              dst[d] = p.scale * load_elem(p.q, p.dtype, off + d * p.q_stride_d);
          }
        }
        fill_floats(sc.q + rows * D, sc.q + rpad * D, 0.0f);
        fill_floats(sc.o, sc.o + rpad * dv_pad, 0.0f);
        for (int64_t r = 0; r < rpad; ++r) sc.state[r] = SoftmaxState();
        if (p.has_block_mask()) {
          for (int64_t g = 0; g < G; ++g)
            fill_block_modes(p, b, hkv * G + g, qb, sc.modes + g * num_kv_blocks);
        }

        // Visible key range of the whole block, and the range visible to every row.
        const KeyRange first = key_range(p, i0), last = key_range(p, i0 + nq - 1);
        const int64_t range_lo = first.lo, range_hi = last.hi;

        auto process_tile = [&](int64_t j0, int64_t j1, int64_t kb) {
          const int64_t width = j1 - j0;
          const int64_t width_pad = round_up(width, Vec::kLanes);
          // Pack K^T [D, width] and V [width, Dv] as fp32, pad columns/rows with zeros, unless
          // the thread packed this very tile lately (consecutive q blocks share tiles).
          const int64_t tag_bh = b * Hkv + hkv;
          int slot = 0;
          while (slot < kTileSlots &&
                 !(tags[slot].bh == tag_bh && tags[slot].j0 == j0 && tags[slot].width == width))
            ++slot;
          const bool cached = slot < kTileSlots;
          if (!cached) slot = static_cast<int>(next_slot++ % kTileSlots);
          float* kt = sc.kt + slot * pad16(D * kBlockK);
          float* vs = sc.vs + slot * pad16(kBlockK * dv_pad);
          tags[slot] = TileTag{tag_bh, j0, width};
          if (!cached) pack_key_tile(p, k_off, j0, width, kt);
          for (int64_t c = 0; c < width && !cached; ++c) {
            const int64_t vo = v_off + (j0 + c) * p.v_stride_t;
            float* vdst = vs + c * dv_pad;
            if (p.dtype == FlashDtype::kFloat32 && p.v_stride_d == 1) {
              std::memcpy(vdst, static_cast<const float*>(p.v) + vo, sizeof(float) * Dv);
            } else if (p.dtype == FlashDtype::kBFloat16 && p.v_stride_d == 1) {
              widen_bf16_row(static_cast<const uint16_t*>(p.v) + vo, Dv, vdst);
            } else {
              for (int64_t e = 0; e < Dv; ++e)
                vdst[e] = load_elem(p.v, p.dtype, vo + e * p.v_stride_d);
            }
            fill_floats(vdst + Dv, vdst + dv_pad, 0.0f);
          }
          for (int64_t d = 0; d < D && !cached; ++d) {
            fill_floats(kt + d * kBlockK + width, kt + d * kBlockK + width_pad, 0.0f);
          }

          // Column ranges: whole tiles inside the block's common key range, else the union of
          // the rows' visible keys per row block (padded row blocks get none).
          const bool edge = !(j0 >= last.lo && j1 <= first.hi);
          for (int64_t rb = 0; rb < rpad; rb += kRowBlock) {
            ColRange cr{0, width_pad};
            if (edge) {
              int64_t lo = width, hi = 0;
              for (int64_t r = rb; r < std::min(rb + kRowBlock, rows); ++r) {
                const KeyRange kr = key_range(p, i0 + r % nq);
                lo = std::min(lo, std::max<int64_t>(0, kr.lo - j0));
                hi = std::max(hi, std::min(width, kr.hi - j0));
              }
              cr = hi > lo ? ColRange{lo / Vec::kLanes * Vec::kLanes, round_up(hi, Vec::kLanes)}
                           : ColRange{0, 0};
            }
            sc.cols[rb / kRowBlock] = cr;
          }

          gemm_qk(sc.q, rpad, D, kt, sc.cols, sc.s);

          for (int64_t r = 0; r < rows; ++r) {
            const int64_t g = r / nq, i = i0 + r % nq, h = hkv * G + g;
            const ColRange cr = sc.cols[r / kRowBlock];
            float* s = sc.s + r * kBlockK;
            // Without a block mask a mask functor makes every tile partial.
            const uint8_t mode = kb >= 0 ? sc.modes[g * num_kv_blocks + kb]
                                         : (use_mask_row ? uint8_t{kPartial} : uint8_t{kFull});
            if (mode == kSkip) {
              fill_floats(s + cr.lo, s + cr.hi, 0.0f);
              continue;
            }
            if (p.softcap > 0.0f) {
              const typename Vec::reg cap = Vec::set1(p.softcap), inv = Vec::set1(1.0f / p.softcap);
              for (int64_t c = cr.lo; c < cr.hi; c += Vec::kLanes) {
                Vec::store(s + c, Vec::mul(cap, Vec::tanh(Vec::mul(Vec::load(s + c), inv))));
              }
            }
            const bool partial = mode == kPartial && use_mask_row;
            if (edge || element_mods || partial) {
              // Keys outside [cr.lo, cr.hi) are outside the row's range: only the range is needed.
              const int64_t n = std::min(width, cr.hi) - cr.lo;
              if (n > 0) modify_row(p, b, h, i, j0 + cr.lo, n, key_range(p, i), partial, s + cr.lo);
            }
            for (int64_t c = std::max(width, cr.lo); c < cr.hi; ++c) s[c] = kNegInf;
            sc.state[r].merge(s + cr.lo, cr.hi - cr.lo, sc.o + r * dv_pad, dv_pad);
          }
          // Padded rows hold S = 0 from zero query rows: make their P zero too.
          for (int64_t r = rows; r < rpad; ++r) {
            const ColRange cr = sc.cols[r / kRowBlock];
            fill_floats(sc.s + r * kBlockK + cr.lo, sc.s + r * kBlockK + cr.hi, 0.0f);
          }

          gemm_pv(sc.s, rpad, width, sc.cols, vs, dv_pad, sc.o);
        };

        if (p.has_block_mask()) {
          for (int64_t kb = 0; kb < num_kv_blocks; ++kb) {
            bool any = false;
            for (int64_t g = 0; g < G; ++g) any = any || sc.modes[g * num_kv_blocks + kb] != kSkip;
            if (!any) continue;
            const int64_t lo = std::max(kb * p.block_k, range_lo);
            const int64_t hi = std::min({(kb + 1) * p.block_k, range_hi, Tkv});
            for (int64_t j0 = lo; j0 < hi; j0 += kBlockK)
              process_tile(j0, std::min(j0 + kBlockK, hi), kb);
          }
        } else {
          // This split's share of the range's tiles.
          const int64_t tiles = ceil_div(range_hi - range_lo, kBlockK);
          const int64_t per_split = ceil_div(tiles, num_splits);
          const int64_t lo = range_lo + std::min(tiles, split * per_split) * kBlockK;
          const int64_t hi = std::min(range_hi, range_lo + (split + 1) * per_split * kBlockK);
          for (int64_t j0 = lo; j0 < hi; j0 += kBlockK)
            process_tile(j0, std::min(j0 + kBlockK, hi), -1);
        }

        if (num_splits > 1) {  // keep the partial state; the merge below finalizes
          const int64_t slot = (bh * num_q_blocks + qb) * num_splits + split;
          float* po = part_o.data() + slot * rows_pad * dv_pad;
          float* ps = part_state.data() + slot * rows_pad * 2;
          for (int64_t r = 0; r < rows; ++r) {
            ps[2 * r] = sc.state[r].m;
            ps[2 * r + 1] = sc.state[r].l;
            std::memcpy(po + r * dv_pad, sc.o + r * dv_pad, sizeof(float) * dv_pad);
          }
          continue;
        }

        // Finalize: fold the sink, out <- O / l, lse <- m + log l.
        for (int64_t r = 0; r < rows; ++r) {
          finalize_row(p, b, hkv * G + r / nq, i0 + r % nq, sc.state[r], sc.o + r * dv_pad);
        }
      }
    }
  });
  if (num_splits == 1) return;

  // Merge the splits: m = max_s m_s, l = sum_s l_s exp(m_s - m), acc = sum_s acc_s exp(m_s - m).
  at::parallel_for(0, base_items, 1, [&](int64_t begin, int64_t end) {
    float* acc = slab.get() + per_thread * at::get_thread_num();  // scratch is free again
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / num_q_blocks, qb = item % num_q_blocks;
      const int64_t b = bh / Hkv, hkv = bh % Hkv, i0 = qb * rows_q;
      const int64_t nq = std::min(rows_q, Tq - i0);
      for (int64_t r = 0; r < G * nq; ++r) {
        SoftmaxState st;
        for (int64_t sp = 0; sp < num_splits; ++sp) {
          st.m = std::max(st.m, part_state[((item * num_splits + sp) * rows_pad + r) * 2]);
        }
        fill_floats(acc, acc + dv_pad, 0.0f);
        if (st.m != kNegInf) {
          for (int64_t sp = 0; sp < num_splits; ++sp) {
            const int64_t slot = item * num_splits + sp;
            const float m_s = part_state[(slot * rows_pad + r) * 2];
            if (m_s == kNegInf) continue;
            const float alpha = std::exp(m_s - st.m);
            st.l += alpha * part_state[(slot * rows_pad + r) * 2 + 1];
            const float* po = part_o.data() + (slot * rows_pad + r) * dv_pad;
            const typename Vec::reg va = Vec::set1(alpha);
            for (int64_t e = 0; e < dv_pad; e += Vec::kLanes) {
              Vec::store(acc + e, Vec::fma(va, Vec::load(po + e), Vec::load(acc + e)));
            }
          }
        }
        finalize_row(p, b, hkv * G + r / nq, i0 + r % nq, st, acc);
      }
    }
  });
}
