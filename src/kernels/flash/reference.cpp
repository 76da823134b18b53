// Scalar reference of the flash kernels, llm.c style: plain loops over one query row at a time,
// the whole row of logits materialised. It is the fallback (ATTNKIT_CPU_CAPABILITY=reference)
// and the oracle the SIMD paths are tested against. See params.h for the legend.

#include "kernels/flash/common.h"
#include "kernels/flash/kernel.h"

#include <ATen/Parallel.h>

#include <vector>

namespace attnkit {
namespace kernels {
namespace flash {

namespace {

// logits[j] for one query row (b, h, i), masked entries -inf; raw[j] keeps scale * q.k before
// the softcap (the backward needs it). Returns nothing; mode is scratch [num_kv_blocks].
void row_logits(const FlashParams& p,
                int64_t b,
                int64_t h,
                int64_t i,
                uint8_t* mode,
                float* raw,
                float* logits) {
  const int64_t G = p.num_heads_q / p.num_heads_kv, hkv = h / G;
  const int64_t Tkv = p.seq_len_kv, D = p.head_dim;
  const KeyRange kr = key_range(p, i);
  if (p.has_block_mask()) fill_block_modes(p, b, h, i / p.block_q, mode);
  const int64_t q_off = b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t;
  for (int64_t j = 0; j < Tkv; ++j) {
    if (j < kr.lo || j >= kr.hi || (p.has_block_mask() && mode[j / p.block_k] == kSkip)) {
      raw[j] = 0.0f;
      logits[j] = kNegInf;
      continue;
    }
    const int64_t k_off = b * p.k_stride_b + hkv * p.k_stride_h + j * p.k_stride_t;
    float dot = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      dot += load_elem(p.q, p.dtype, q_off + d * p.q_stride_d) *
             load_elem(p.k, p.dtype, k_off + d * p.k_stride_d);
    }
    raw[j] = p.scale * dot;
    logits[j] = p.softcap > 0.0f ? p.softcap * std::tanh(raw[j] / p.softcap) : raw[j];
  }
  modify_row_blocks(p, b, h, i, 0, Tkv, kr, p.has_block_mask() ? mode : nullptr, logits);
}

// Per-thread scratch: raw + logits rows and block modes.
struct RowScratch {
  std::vector<float> raw, logits;
  std::vector<uint8_t> mode;
};

std::vector<RowScratch> make_scratch(const FlashParams& p) {
  std::vector<RowScratch> scratch(static_cast<size_t>(at::get_num_threads()));
  for (RowScratch& s : scratch) {
    s.raw.resize(static_cast<size_t>(p.seq_len_kv));
    s.logits.resize(static_cast<size_t>(p.seq_len_kv));
    s.mode.resize(static_cast<size_t>(std::max<int64_t>(p.num_kv_blocks, 1)));
  }
  return scratch;
}

}  // namespace

void flash_forward_reference(const FlashParams& p) {
  const int64_t B = p.batch_size, Hq = p.num_heads_q, Tq = p.seq_len_q;
  const int64_t Tkv = p.seq_len_kv, Dv = p.head_dim_v;
  const int64_t G = Hq / p.num_heads_kv;
  std::vector<RowScratch> scratch = make_scratch(p);
  std::vector<std::vector<float>> acc(scratch.size(), std::vector<float>(static_cast<size_t>(Dv)));

  // One item per (b, h): grain 1, each item is Tq x Tkv dot products.
  at::parallel_for(0, B * Hq, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* raw = scratch[tid].raw.data();
    float* logits = scratch[tid].logits.data();
    uint8_t* mode = scratch[tid].mode.data();
    float* o = acc[tid].data();
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hq, h = bh % Hq, hkv = h / G;
      for (int64_t i = 0; i < Tq; ++i) {
        row_logits(p, b, h, i, mode, raw, logits);
        // m <- max(logits, sink); l <- sum exp(logits - m) + exp(sink - m)
        float m = kNegInf;
        for (int64_t j = 0; j < Tkv; ++j) m = std::max(m, logits[j]);
        if (p.maybe_sinks != nullptr) m = std::max(m, p.maybe_sinks[h]);
        float l = 0.0f;
        for (int64_t e = 0; e < Dv; ++e) o[e] = 0.0f;
        if (m != kNegInf) {
          for (int64_t j = 0; j < Tkv; ++j) {
            if (logits[j] == kNegInf) continue;
            const float pj = std::exp(logits[j] - m);
            l += pj;
            const int64_t v_off = b * p.v_stride_b + hkv * p.v_stride_h + j * p.v_stride_t;
            for (int64_t e = 0; e < Dv; ++e)
              o[e] += pj * load_elem(p.v, p.dtype, v_off + e * p.v_stride_d);
          }
          if (p.maybe_sinks != nullptr) l += std::exp(p.maybe_sinks[h] - m);
        }
        // A fully masked row without a sink: l = 0, output 0, lse -inf.
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const int64_t out_off = b * p.out_stride_b + h * p.out_stride_h + i * p.out_stride_t;
        for (int64_t e = 0; e < Dv; ++e)
          store_elem(p.out, p.dtype, out_off + e * p.out_stride_d, o[e] * inv);
        p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i * p.lse_stride_t] =
            l > 0.0f ? m + std::log(l) : kNegInf;
      }
    }
  });
}

void flash_backward_reference(const FlashParams& p, const FlashBackwardParams& g) {
  const int64_t B = p.batch_size, Hq = p.num_heads_q, Hkv = p.num_heads_kv, Tq = p.seq_len_q;
  const int64_t Tkv = p.seq_len_kv, D = p.head_dim, Dv = p.head_dim_v;
  const int64_t G = Hq / Hkv;
  std::vector<RowScratch> scratch = make_scratch(p);
  std::vector<double> dsinks_partial(static_cast<size_t>(B * Hq), 0.0);

  // One item per (b, kv head): the item owns dk, dv of its kv head and dq of its G query heads,
  // so no two threads write the same gradient element.
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* raw = scratch[tid].raw.data();
    float* logits = scratch[tid].logits.data();
    uint8_t* mode = scratch[tid].mode.data();
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / Hkv, hkv = bk % Hkv;
      float* dk = g.dk + (b * Hkv + hkv) * Tkv * D;
      float* dv = g.dv + (b * Hkv + hkv) * Tkv * Dv;
      for (int64_t h = hkv * G; h < (hkv + 1) * G; ++h) {
        for (int64_t i = 0; i < Tq; ++i) {
          const float lse = p.lse[b * p.lse_stride_b + h * p.lse_stride_h + i * p.lse_stride_t];
          if (lse == kNegInf) continue;  // fully masked row: output 0 does not depend on inputs
          row_logits(p, b, h, i, mode, raw, logits);
          const int64_t q_off = b * p.q_stride_b + h * p.q_stride_h + i * p.q_stride_t;
          const int64_t o_off = b * p.out_stride_b + h * p.out_stride_h + i * p.out_stride_t;
          const int64_t do_off = b * g.dout_stride_b + h * g.dout_stride_h + i * g.dout_stride_t;
          // Di = dO . O (= sum_j P_j dP_j)
          float di = 0.0f;
          for (int64_t e = 0; e < Dv; ++e) {
            di += load_elem(g.dout, p.dtype, do_off + e * g.dout_stride_d) *
                  load_elem(p.out, p.dtype, o_off + e * p.out_stride_d);
          }
          // sink: lse = log(sum_j exp s_j + exp sink)  =>  dL/dsink = -exp(sink - lse) Di
          if (g.maybe_dsinks != nullptr)
            dsinks_partial[b * Hq + h] -= std::exp(p.maybe_sinks[h] - lse) * di;
          float* dq = g.dq + ((b * Hq + h) * Tq + i) * D;
          for (int64_t j = 0; j < Tkv; ++j) {
            if (logits[j] == kNegInf) continue;
            // forward: P_j = exp(s_j - lse), O = sum_j P_j V_j
            const float pj = std::exp(logits[j] - lse);
            const int64_t v_off = b * p.v_stride_b + hkv * p.v_stride_h + j * p.v_stride_t;
            const int64_t k_off = b * p.k_stride_b + hkv * p.k_stride_h + j * p.k_stride_t;
            float dpj = 0.0f;  // dP_j = dO . V_j ; dV_j += P_j dO
            for (int64_t e = 0; e < Dv; ++e) {
              const float doe = load_elem(g.dout, p.dtype, do_off + e * g.dout_stride_d);
              dpj += doe * load_elem(p.v, p.dtype, v_off + e * p.v_stride_d);
              dv[j * Dv + e] += pj * doe;
            }
            // dS_j = P_j (dP_j - Di); the bias is added after the softcap: dBias = dS
            const float dsj = pj * (dpj - di);
            if (g.maybe_dbias != nullptr) g.maybe_dbias[((b * Hq + h) * Tq + i) * Tkv + j] = dsj;
            // softcap: s = c tanh(raw / c)  =>  ds/draw = 1 - tanh^2
            float draw = dsj;
            if (p.softcap > 0.0f) {
              const float t = std::tanh(raw[j] / p.softcap);
              draw *= 1.0f - t * t;
            }
            // raw = scale q.k  =>  dq += scale draw k ; dk += scale draw q
            const float c = p.scale * draw;
            for (int64_t d = 0; d < D; ++d) {
              dq[d] += c * load_elem(p.k, p.dtype, k_off + d * p.k_stride_d);
              dk[j * D + d] += c * load_elem(p.q, p.dtype, q_off + d * p.q_stride_d);
            }
          }
        }
      }
    }
  });
  if (g.maybe_dsinks != nullptr) {
    for (int64_t h = 0; h < Hq; ++h) {
      double sum = 0.0;
      for (int64_t b = 0; b < B; ++b) sum += dsinks_partial[b * Hq + h];
      g.maybe_dsinks[h] = static_cast<float>(sum);
    }
  }
}

}  // namespace flash
}  // namespace kernels
}  // namespace attnkit
