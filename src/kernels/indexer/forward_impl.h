// SIMD index top-k, written against the vector traits `Vec` of the including ISA translation
// unit (avx512.cpp / avx2.cpp), inside its namespace (no include guard, no includes).
//
// One work item is (b, group, block of queries). Its rows are the block's queries x Hi heads
// (r = ii * Hi + h), scaled and packed once. For each tile of kTileK visible keys:
//   S    <- Qs Kt                                  [rows, kTileK]  4 x C register-blocked
//   comb <- sum_h w[ii, h] act(S[ii * Hi + h])     [kTileK] per query, -inf where invisible
//   heap <- comb                                   streaming top-k per query (select.h)
// When Hi is a multiple of 4, S of one query's 4 heads stays in registers and is combined
// there (qk_combine): no score tile. Either way the [Tq, Tk] score matrix never exists: per
// thread the working set is the packed queries, one key tile (and one score tile), in L1/L2.

// The tile width kBlockK (64 keys), kRowBlock and qk_micro come from the flash kernels.
#include "kernels/cpu/qk_micro_impl.h"

constexpr int64_t kTileK = kBlockK;
// Rows (queries x heads) per work item.
constexpr int64_t kRowsPerItem = 64;

// Bit c set where lane c of x is greater than t (false for NaN).
static inline uint32_t above_mask(typename Vec::reg x, float t) {
#ifdef __AVX512F__
  return _mm512_cmp_ps_mask(x, _mm512_set1_ps(t), _CMP_GT_OQ);
#else
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(t), _CMP_GT_OQ)));
#endif
}

// out[0:C*L] (+)= sum_r w[r] act(Q[r] Kt) over 4 heads r of one query: the head combine in
// registers, no score tile.
template <int C>
static inline void qk_combine(const float* q,
                              int64_t head_dim,
                              const float* kt,
                              const float* w,
                              bool relu,
                              bool accumulate,
                              float* out) {
  typename Vec::reg acc[kRowBlock][C];
  qk_micro_regs<C>(q, head_dim, kt, acc);
  for (int c = 0; c < C; ++c) {
    typename Vec::reg o = accumulate ? Vec::load(out + c * Vec::kLanes) : Vec::zero();
    for (int r = 0; r < kRowBlock; ++r) {
      const typename Vec::reg x = relu ? Vec::max(acc[r][c], Vec::zero()) : acc[r][c];
      o = Vec::fma(Vec::set1(w[r]), x, o);
    }
    Vec::store(out + c * Vec::kLanes, o);
  }
}

static void index_topk_impl(const IndexTopkParams& p) {
  const int64_t B = p.batch_size, G = p.num_groups, Tq = p.seq_len_q, Tk = p.seq_len_kv;
  const int64_t Hi = p.num_heads, D = p.head_dim, K = p.top_k;
  const int64_t rows_q = std::max<int64_t>(1, std::min(Tq, kRowsPerItem / Hi));
  const int64_t num_q_blocks = (Tq + rows_q - 1) / rows_q;
  const int64_t rows_pad = (rows_q * Hi + kRowBlock - 1) / kRowBlock * kRowBlock;
  constexpr int64_t kChunk = Vec::kLanes * Vec::kColVecs;
  // Long lists keep each query's whole scored row and select by radix; short ones stream into a
  // heap per query.
  const bool radix = p.block_size == 1 && K >= kRadixMinTopK;
  // Heads in whole register blocks: each query's heads are scored and combined in registers
  // (qk_combine); otherwise a score tile [rows, kTileK] is combined after (qk_micro).
  const bool fused_combine = Hi % kRowBlock == 0;

  // K^T of every batch, packed once as fp32 tiles [B, num_tiles, D, kTileK] (zero columns past
  // Tk): a tile is one contiguous 16 KB block (a [D, Tk] layout would put its rows Tk floats
  // apart, all in one L1 set).
  const int64_t num_tiles = (Tk + kTileK - 1) / kTileK, tk_pad = num_tiles * kTileK;
  std::vector<float> kt_all(static_cast<size_t>(B * D * tk_pad));
  at::parallel_for(0, B * num_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / num_tiles, j0 = bt % num_tiles * kTileK;
      float* dst = kt_all.data() + bt * D * kTileK;
      for (int64_t c = 0; c < kTileK; ++c) {
        const int64_t j = j0 + c;
        for (int64_t d = 0; d < D; ++d) {
          dst[d * kTileK + c] =
              j < Tk
                  ? load_value(p.k, p.dtype, b * p.k_stride_b + j * p.k_stride_t + d * p.k_stride_d)
                  : 0.0f;
        }
      }
    }
  });

  // Per-thread scratch: packed queries, weights, a score tile (unless the heads are combined in
  // registers), the combined row, and per query either a heap or a whole scored row (+ radix
  // candidates).
  const int64_t f_q = rows_pad * D, f_w = rows_q * Hi, f_comb = kTileK;
  const int64_t f_s = fused_combine ? 0 : rows_pad * kTileK;
  const int64_t f_rows = radix ? rows_q * tk_pad + tk_pad : 0;
  const int64_t floats = f_q + f_w + f_s + f_comb + f_rows;
  const int num_threads = at::get_num_threads();
  std::vector<float> slab(static_cast<size_t>(floats * num_threads));
  std::vector<uint64_t> heap_keys(static_cast<size_t>(radix ? 0 : rows_q * K * num_threads));
  std::vector<int64_t> out_scratch(static_cast<size_t>(p.out32 != nullptr ? K * num_threads : 0));

  at::parallel_for(0, B * G * num_q_blocks, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* qs = slab.data() + floats * tid;
    float* wr = qs + f_q;
    float* s = wr + f_w;
    float* comb = s + f_s;
    float* rows_or_heaps = comb + f_comb;
    std::vector<RowTopK> heaps(static_cast<size_t>(radix ? 0 : rows_q));
    for (size_t ii = 0; ii < heaps.size(); ++ii) {
      heaps[ii].key = heap_keys.data() + (tid * rows_q + ii) * K;
      heaps[ii].cap = K;
    }

    for (int64_t item = begin; item < end; ++item) {
      // Zig-zag over the query blocks of one (b, g): contiguous ranges carry equal causal work.
      const int64_t bg = item / num_q_blocks, t = item % num_q_blocks;
      const int64_t qb = (t % 2 == 0) ? t / 2 : num_q_blocks - 1 - t / 2;
      const int64_t b = bg / G, g = bg % G;
      const int64_t i0 = qb * rows_q, nq = std::min(rows_q, Tq - i0), rows = nq * Hi;

      for (int64_t ii = 0; ii < nq; ++ii) {
        if (!radix) heaps[ii].reset();
        for (int64_t h = 0; h < Hi; ++h) {
          const int64_t off =
              b * p.q_stride_b + g * p.q_stride_g + (i0 + ii) * p.q_stride_t + h * p.q_stride_h;
          float* dst = qs + (ii * Hi + h) * D;
          for (int64_t d = 0; d < D; ++d)
            dst[d] = p.scale * load_value(p.q, p.dtype, off + d * p.q_stride_d);
          wr[ii * Hi + h] = p.maybe_w == nullptr
                                ? 1.0f
                                : p.maybe_w[b * p.w_stride_b + g * p.w_stride_g +
                                            (i0 + ii) * p.w_stride_t + h * p.w_stride_h];
        }
      }
      std::fill(qs + rows * D, qs + rows_pad * D, 0.0f);

      const float* kt_b = kt_all.data() + b * D * tk_pad;  // tile j0 / kTileK at kt_b + j0 * D
      int64_t hi = 0;  // the block's last scored key (a key limit need not grow with i)
      for (int64_t ii = 0; ii < nq; ++ii) hi = std::max(hi, causal_limit(p, i0 + ii));
      for (int64_t j0 = 0; j0 < hi; j0 += kTileK) {
        const int64_t width = std::min(kTileK, hi - j0);
        if (!fused_combine) {
          for (int64_t r = 0; r < rows_pad; r += kRowBlock) {
            for (int64_t c0 = 0; c0 < kTileK; c0 += kChunk)
              qk_micro<Vec::kColVecs>(qs + r * D, D, kt_b + j0 * D + c0, s + r * kTileK + c0);
          }
        }
        for (int64_t ii = 0; ii < nq; ++ii) {
          const int64_t i = i0 + ii;
          const int64_t n = std::min(width, causal_limit(p, i) - j0);
          if (n <= 0) continue;
          float* out = radix ? rows_or_heaps + ii * tk_pad + j0 : comb;
          if (fused_combine) {
            for (int64_t h = 0; h < Hi; h += kRowBlock) {
              for (int64_t c0 = 0; c0 < kTileK; c0 += kChunk)
                qk_combine<Vec::kColVecs>(qs + (ii * Hi + h) * D, D, kt_b + j0 * D + c0,
                                          wr + ii * Hi + h, p.relu, h > 0, out + c0);
            }
          } else {
            for (int64_t c = 0; c < kTileK; c += Vec::kLanes) {
              typename Vec::reg acc = Vec::zero();
              for (int64_t h = 0; h < Hi; ++h) {
                typename Vec::reg x = Vec::load(s + (ii * Hi + h) * kTileK + c);
                if (p.relu) x = Vec::max(x, Vec::zero());
                acc = Vec::fma(Vec::set1(wr[ii * Hi + h]), x, acc);
              }
              Vec::store(out + c, acc);
            }
          }
          if (p.maybe_keep != nullptr) {
            const uint8_t* keep = p.maybe_keep + b * p.keep_stride_b + i * p.keep_stride_q;
            for (int64_t c = 0; c < n; ++c) {
              if (keep[(j0 + c) * p.keep_stride_k] == 0) out[c] = kNegInf;
            }
          }
          if (radix) continue;
          if (p.block_size > 1) {
            if (n == kTileK && p.block_size % kTileK == 0) {
              // The whole tile lies in one unit: its max by vectors.
              typename Vec::reg mx = Vec::load(comb);
              for (int64_t c = Vec::kLanes; c < kTileK; c += Vec::kLanes)
                mx = Vec::max(mx, Vec::load(comb + c));
              heaps[ii].offer_unit_max(Vec::reduce_max(mx), j0 / p.block_size);
            } else {
              heaps[ii].offer(comb, n, j0, p.block_size);
            }
            continue;
          }
          // Keys: a vector compare against the heap's threshold finds the few lanes that may
          // enter (the threshold only rises, so a lane that fails stays out).
          RowTopK& heap = heaps[ii];
          for (int64_t c = 0; c < n; c += Vec::kLanes) {
            uint32_t lanes = above_mask(Vec::load(comb + c), heap.threshold());
            if (n - c < Vec::kLanes) lanes &= (1u << (n - c)) - 1;
            while (lanes != 0) {
              const int lane = __builtin_ctz(lanes);
              lanes &= lanes - 1;
              if (comb[c + lane] > heap.threshold()) heap.push(comb[c + lane], j0 + c + lane);
            }
          }
        }
      }
      for (int64_t ii = 0; ii < nq; ++ii) {
        const int64_t row = (b * G + g) * Tq + i0 + ii;
        int64_t* out = p.row_out(row, out_scratch.data() + tid * K);
        if (radix) {
          radix_top_k(rows_or_heaps + ii * tk_pad, causal_limit(p, i0 + ii), K, K,
                      reinterpret_cast<uint32_t*>(rows_or_heaps + rows_q * tk_pad), out);
        } else {
          heaps[ii].write(out, K);
        }
        p.finish_row(row, out);
      }
    }
  });
}
