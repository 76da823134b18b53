// Scalar index top-k: one query row at a time, every visible key scored by plain loops, then
// the same streaming selection as the SIMD paths (select.h). The baseline ISA path and the
// oracle the SIMD paths are tested against.

#include "kernels/indexer/select.h"

#include <ATen/Parallel.h>

#include <vector>

namespace attnkit {
namespace kernels {
namespace indexer {

void index_topk_reference(const IndexTopkParams& p) {
  const int64_t G = p.num_groups, Tq = p.seq_len_q, Hi = p.num_heads, D = p.head_dim;
  const int64_t K = p.top_k;
  at::parallel_for(0, p.batch_size * G * Tq, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(p.seq_len_kv));
    std::vector<uint64_t> heap_keys(K);
    std::vector<uint32_t> candidates(static_cast<size_t>(p.seq_len_kv));
    std::vector<int64_t> out_scratch(static_cast<size_t>(K));
    RowTopK heap;
    heap.key = heap_keys.data(), heap.cap = K;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (G * Tq), g = (row / Tq) % G, i = row % Tq;
      const int64_t hi = causal_limit(p, i);
      for (int64_t j = 0; j < hi; ++j) {
        float total = 0.0f;
        for (int64_t h = 0; h < Hi; ++h) {
          const int64_t q_off =
              b * p.q_stride_b + g * p.q_stride_g + i * p.q_stride_t + h * p.q_stride_h;
          const int64_t k_off = b * p.k_stride_b + j * p.k_stride_t;
          float dot = 0.0f;
          for (int64_t d = 0; d < D; ++d) {
            dot += p.scale * load_value(p.q, p.dtype, q_off + d * p.q_stride_d) *
                   load_value(p.k, p.dtype, k_off + d * p.k_stride_d);
          }
          if (p.relu) dot = std::max(dot, 0.0f);
          const float w = p.maybe_w == nullptr ? 1.0f
                                               : p.maybe_w[b * p.w_stride_b + g * p.w_stride_g +
                                                           i * p.w_stride_t + h * p.w_stride_h];
          total += w * dot;
        }
        const bool keep =
            p.maybe_keep == nullptr ||
            p.maybe_keep[b * p.keep_stride_b + i * p.keep_stride_q + j * p.keep_stride_k] != 0;
        scores[j] = keep ? total : kNegInf;
      }
      int64_t* out = p.row_out(row, out_scratch.data());
      if (p.block_size == 1 && K >= kRadixMinTopK) {
        radix_top_k(scores.data(), hi, K, K, candidates.data(), out);
      } else {
        heap.reset();
        heap.offer(scores.data(), hi, 0, p.block_size);
        heap.write(out, K);
      }
      p.finish_row(row, out);
    }
  });
}

}  // namespace indexer
}  // namespace kernels
}  // namespace attnkit
