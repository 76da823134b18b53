// The QK micro-kernel and its tile constants, shared by the flash forward and the index top-k
// kernels; written against the vector traits `Vec` of the including ISA translation unit,
// inside its namespace (no include guard, no includes).

// Keys per tile: 4 AVX-512 vectors, the width of the QK micro-kernel. Larger tiles make the
// O rescale (rows x Dv per tile) cheaper but push the packed K tile out of L1.
constexpr int64_t kBlockK = 64;
// Rows of the register-blocked micro-kernels: 4 rows x 4 vectors = 16 accumulators, leaving
// room for the 4 B-vectors and broadcasts in the 32 zmm (16 ymm for AVX2 with 2 vectors).
constexpr int64_t kRowBlock = 4;
static_assert(kBlockK % (Vec::kLanes * Vec::kColVecs) == 0, "kBlockK must be whole column chunks");

// acc[r][c] <- Q[r, 0:D] Kt[0:D, c*L : (c+1)*L] for r < 4, c < C; Q rows have stride D, Kt
// stride kBlockK. Inlined into its callers, which keep acc in registers.
template <int C>
__attribute__((always_inline)) static inline void qk_micro_regs(
    const float* q, int64_t head_dim, const float* kt, typename Vec::reg (&acc)[kRowBlock][C]) {
  for (int r = 0; r < kRowBlock; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = Vec::zero();
  for (int64_t d = 0; d < head_dim; ++d) {
    typename Vec::reg kv[C];
    for (int c = 0; c < C; ++c) kv[c] = Vec::load(kt + d * kBlockK + c * Vec::kLanes);
    for (int r = 0; r < kRowBlock; ++r) {
      const typename Vec::reg qv = Vec::set1(q[r * head_dim + d]);
      for (int c = 0; c < C; ++c) acc[r][c] = Vec::fma(qv, kv[c], acc[r][c]);
    }
  }
}

// S[0:4, 0:C*L] <- Q[0:4, 0:D] Kt[0:D, 0:C*L]; Q rows have stride D, Kt and S stride kBlockK.
template <int C>
static inline void qk_micro(const float* q, int64_t head_dim, const float* kt, float* s) {
  typename Vec::reg acc[kRowBlock][C];
  qk_micro_regs<C>(q, head_dim, kt, acc);
  for (int r = 0; r < kRowBlock; ++r)
    for (int c = 0; c < C; ++c) Vec::store(s + r * kBlockK + c * Vec::kLanes, acc[r][c]);
}
