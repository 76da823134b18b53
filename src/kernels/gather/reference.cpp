// Gather attention, scalar reference (llm.c style). One work item per (b, kv head): it owns
// dk and dv of that kv head and dq of its G query heads, so the backward needs no atomics.
//   forward:  s_j = scale q . k[idx_j];  e_j = exp(s_j - lse);  p_j = w_j e_j
//             lse = log (sum_j w_j exp(s_j) + exp(sink));  out = sum_j p_j v[idx_j]
// (no sink term without sinks). The backward reads p from the lse, so the sink needs nothing
// there; its own gradient is a reduction the op layer computes.

#include "kernels/flash/common.h"
#include "kernels/gather/params.h"

#include <ATen/Parallel.h>

#include <vector>

namespace attnkit {
namespace kernels {
namespace gather {

namespace {

using flash::kNegInf;
using flash::load_elem;
using flash::store_elem;

// keys[n] and s[n] for the slots of query row (b, h, i); s = -inf for unused slots or zero
// weights.
void row_scores(const GatherParams& p, int64_t b, int64_t h, int64_t i, int64_t* keys, float* s) {
  const int64_t G = p.num_heads_q / p.num_heads_kv, hkv = h / G, K = p.num_keys;
  const int64_t row = p.list_row((b * p.num_heads_kv + hkv) * p.seq_len_q + i);
  const float* w = p.maybe_weights ? p.maybe_weights + row * K : nullptr;
  p.row_keys(row, i, keys);
  const int64_t q_off = b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t;
  for (int64_t n = 0; n < p.slots(); ++n) {
    if (keys[n] < 0 || (w != nullptr && w[n / p.block_size] <= 0.0f)) {
      s[n] = kNegInf;
      continue;
    }
    const int64_t k_off = b * p.k_stride_b + hkv * p.k_stride_h + keys[n] * p.k_stride_t;
    float dot = 0.0f;
    for (int64_t d = 0; d < p.head_dim; ++d) {
      dot += load_elem(p.q, p.dtype, q_off + d * p.q_stride_d) *
             load_elem(p.k, p.dtype, k_off + d * p.k_stride_d);
    }
    s[n] = p.scale * dot;
  }
}

}  // namespace

void gather_forward_reference(const GatherParams& p) {
  const int64_t Hq = p.num_heads_q, Hkv = p.num_heads_kv, G = Hq / Hkv, Tq = p.seq_len_q;
  const int64_t K = p.num_keys, S = p.slots(), bs = p.block_size, Dv = p.head_dim_v;
  const int num_threads = at::get_num_threads();
  std::vector<float> scratch(static_cast<size_t>(num_threads * (S + Dv)));
  std::vector<int64_t> key_scratch(static_cast<size_t>(num_threads * S));
  at::parallel_for(0, p.batch_size * Hkv, 1, [&](int64_t begin, int64_t end) {
    float* s = scratch.data() + at::get_thread_num() * (S + Dv);
    float* o = s + S;
    int64_t* keys = key_scratch.data() + at::get_thread_num() * S;
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / Hkv, hkv = bk % Hkv;
      for (int64_t h = hkv * G; h < (hkv + 1) * G; ++h) {
        for (int64_t i = 0; i < Tq; ++i) {
          const int64_t row = (b * Hkv + hkv) * Tq + i;
          const float* w = p.maybe_weights ? p.maybe_weights + p.list_row(row) * K : nullptr;
          row_scores(p, b, h, i, keys, s);
          // m <- max(s, sink); l <- sum_n w_n exp(s_n - m) + exp(sink - m)
          const float sink = p.maybe_sinks ? p.maybe_sinks[h] : kNegInf;
          float m = sink;
          for (int64_t n = 0; n < S; ++n) m = std::max(m, s[n]);
          float l = sink != kNegInf ? std::exp(sink - m) : 0.0f;
          for (int64_t e = 0; e < Dv; ++e) o[e] = 0.0f;
          if (m != kNegInf) {
            for (int64_t n = 0; n < S; ++n) {
              if (s[n] == kNegInf) continue;
              const float pn = (w ? w[n / bs] : 1.0f) * std::exp(s[n] - m);
              l += pn;
              const int64_t v_off = b * p.v_stride_b + hkv * p.v_stride_h + keys[n] * p.v_stride_t;
              for (int64_t e = 0; e < Dv; ++e)
                o[e] += pn * load_elem(p.v, p.dtype, v_off + e * p.v_stride_d);
            }
          }
          const float inv = l > 0.0f ? 1.0f / l : 0.0f;
          const int64_t out_row = ((b * Hq + h) * Tq + i);
          for (int64_t e = 0; e < Dv; ++e) store_elem(p.out, p.dtype, out_row * Dv + e, o[e] * inv);
          p.lse[out_row] = l > 0.0f ? m + std::log(l) : kNegInf;
        }
      }
    }
  });
}

void gather_backward_reference(const GatherParams& p, const GatherBackwardParams& g) {
  const int64_t Hq = p.num_heads_q, Hkv = p.num_heads_kv, G = Hq / Hkv, Tq = p.seq_len_q;
  const int64_t Tkv = p.seq_len_kv, K = p.num_keys, D = p.head_dim, Dv = p.head_dim_v;
  const int64_t S = p.slots(), bs = p.block_size;
  const int num_threads = at::get_num_threads();
  std::vector<float> scratch(static_cast<size_t>(num_threads * S));
  std::vector<int64_t> key_scratch(static_cast<size_t>(num_threads * S));
  at::parallel_for(0, p.batch_size * Hkv, 1, [&](int64_t begin, int64_t end) {
    float* s = scratch.data() + at::get_thread_num() * S;
    int64_t* keys = key_scratch.data() + at::get_thread_num() * S;
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / Hkv, hkv = bk % Hkv;
      float* dk = g.dk + (b * Hkv + hkv) * Tkv * D;
      float* dv = g.dv + (b * Hkv + hkv) * Tkv * Dv;
      for (int64_t h = hkv * G; h < (hkv + 1) * G; ++h) {
        for (int64_t i = 0; i < Tq; ++i) {
          const int64_t out_row = (b * Hq + h) * Tq + i;
          const float lse = p.lse[out_row];
          if (lse == kNegInf) continue;  // no visible key: output 0 depends on nothing
          const int64_t row = (b * Hkv + hkv) * Tq + i;
          const float* w = p.maybe_weights ? p.maybe_weights + p.list_row(row) * K : nullptr;
          row_scores(p, b, h, i, keys, s);
          // Di = dO . O
          float di = 0.0f;
          for (int64_t e = 0; e < Dv; ++e) {
            di += load_elem(g.dout, p.dtype, out_row * Dv + e) *
                  load_elem(p.out, p.dtype, out_row * Dv + e);
          }
          const int64_t q_off = b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t;
          float* dq = g.dq + out_row * D;
          for (int64_t n = 0; n < S; ++n) {
            if (s[n] == kNegInf) continue;
            const int64_t j = keys[n];
            // e_n = exp(s_n - lse); p_n = w_n e_n
            const float en = std::exp(s[n] - lse);
            const float pn = (w ? w[n / bs] : 1.0f) * en;
            const int64_t v_off = b * p.v_stride_b + hkv * p.v_stride_h + j * p.v_stride_t;
            float dpn = 0.0f;  // dP_n = dO . v_j ; dv_j += p_n dO
            for (int64_t e = 0; e < Dv; ++e) {
              const float doe = load_elem(g.dout, p.dtype, out_row * Dv + e);
              dpn += doe * load_elem(p.v, p.dtype, v_off + e * p.v_stride_d);
              dv[j * Dv + e] += pn * doe;
            }
            // out = sum p_n v_n with p_n = w_n exp(s_n) / Z: dL/dw_n = e_n (dP_n - Di),
            // dL/ds_n = p_n (dP_n - Di)
            if (g.maybe_dweights != nullptr)
              g.maybe_dweights[p.list_row(row) * K + n / bs] += en * (dpn - di);
            const float c = p.scale * pn * (dpn - di);
            const int64_t k_off = b * p.k_stride_b + hkv * p.k_stride_h + j * p.k_stride_t;
            for (int64_t d = 0; d < D; ++d) {
              dq[d] += c * load_elem(p.k, p.dtype, k_off + d * p.k_stride_d);
              dk[j * D + d] += c * load_elem(p.q, p.dtype, q_off + d * p.q_stride_d);
            }
          }
        }
      }
    }
  });
}

}  // namespace gather
}  // namespace kernels
}  // namespace attnkit
