#pragma once
// Small helpers shared by every ISA path of the flash kernels. Everything here has internal
// linkage (static) because the including translation units are compiled with different ISA
// flags and must not share inline definitions.

#include "kernels/flash/params.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace attnkit {
namespace kernels {
namespace flash {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A plain loop rather than std::fill: the ISA translation units must not share template
// instantiations compiled with different -m flags.
static inline void fill_floats(float* begin, float* end, float value) {
  for (float* it = begin; it < end; ++it) *it = value;
}

// Visible key interval [lo, hi) of query i from causal / window rules alone.
struct KeyRange {
  int64_t lo = 0;
  int64_t hi = 0;
};

static inline KeyRange key_range(const FlashParams& p, int64_t i) {
  const int64_t pos = i + (p.seq_len_kv - p.seq_len_q);
  int64_t lo = 0, hi = p.seq_len_kv;
  if (p.causal) hi = std::min(hi, pos + 1);
  if (p.window_right >= 0) hi = std::min(hi, pos + p.window_right + 1);
  if (p.window_left >= 0) lo = std::max(lo, pos - p.window_left);
  return {lo, std::max(lo, hi)};
}

// Block-mask state of one (head, kv block): skipped, partial (mask functor applied) or full.
enum BlockMode : uint8_t { kSkip = 0, kPartial = 1, kFull = 2 };

// Fills mode[kb] for kv blocks of head h at mask query block qb.
static inline void fill_block_modes(
    const FlashParams& p, int64_t b, int64_t h, int64_t qb, uint8_t* mode) {
  std::memset(mode, kSkip, static_cast<size_t>(p.num_kv_blocks));
  const int32_t n_partial =
      p.maybe_kv_num_blocks[b * p.kv_num_blocks_stride_b + h * p.kv_num_blocks_stride_h +
                            qb * p.kv_num_blocks_stride_q];
  const int32_t* partial = p.maybe_kv_indices + b * p.kv_indices_stride_b +
                           h * p.kv_indices_stride_h + qb * p.kv_indices_stride_q;
  for (int32_t n = 0; n < n_partial; ++n) {
    const int32_t kb = partial[n];
    if (kb >= 0 && kb < p.num_kv_blocks) mode[kb] = kPartial;
  }
  if (p.maybe_full_kv_num_blocks != nullptr) {
    const int32_t n_full = p.maybe_full_kv_num_blocks[b * p.full_kv_num_blocks_stride_b +
                                                      h * p.full_kv_num_blocks_stride_h +
                                                      qb * p.full_kv_num_blocks_stride_q];
    const int32_t* full = p.maybe_full_kv_indices + b * p.full_kv_indices_stride_b +
                          h * p.full_kv_indices_stride_h + qb * p.full_kv_indices_stride_q;
    for (int32_t n = 0; n < n_full; ++n) {
      const int32_t kb = full[n];
      if (kb >= 0 && kb < p.num_kv_blocks) mode[kb] = kFull;
    }
  }
}

static inline float bf16_to_float(uint16_t x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even, NaN preserved (as c10::BFloat16 does).
static inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if (std::isnan(f)) return 0x7fc0;
  const uint32_t rounding_bias = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

static inline float load_elem(const void* base, FlashDtype dtype, int64_t offset) {
  return dtype == FlashDtype::kFloat32 ? static_cast<const float*>(base)[offset]
                                       : bf16_to_float(static_cast<const uint16_t*>(base)[offset]);
}

static inline void store_elem(void* base, FlashDtype dtype, int64_t offset, float value) {
  if (dtype == FlashDtype::kFloat32) {
    static_cast<float*>(base)[offset] = value;
  } else {
    static_cast<uint16_t*>(base)[offset] = float_to_bf16(value);
  }
}

// The logit modifiers and masks of one row segment s[0:width] (keys j0 .. j0 + width - 1 of
// query i of head h), applied after scale and softcap: keys outside `kr` become -inf, then on
// the visible keys ALiBi, bias, score functor, keep mask and (when `partial`) the mask functor.
static inline void modify_row(const FlashParams& p,
                              int64_t b,
                              int64_t h,
                              int64_t i,
                              int64_t j0,
                              int64_t width,
                              KeyRange kr,
                              bool partial,
                              float* s) {
  const int64_t c_lo = std::min(width, std::max<int64_t>(0, kr.lo - j0));
  const int64_t c_hi = std::max(c_lo, std::min(width, kr.hi - j0));
  fill_floats(s, s + c_lo, kNegInf);
  fill_floats(s + c_hi, s + width, kNegInf);
  if (c_lo == c_hi) return;
  float* seg = s + c_lo;
  const int64_t k0 = j0 + c_lo, n = c_hi - c_lo;
  if (p.maybe_alibi_slopes != nullptr) {
    const float slope = p.maybe_alibi_slopes[h];
    const int64_t pos = i + (p.seq_len_kv - p.seq_len_q);
    for (int64_t c = 0; c < n; ++c) seg[c] += slope * static_cast<float>(k0 + c - pos);
  }
  if (p.maybe_bias != nullptr) {
    const float* bias = p.maybe_bias + b * p.bias_stride_b + h * p.bias_stride_h +
                        i * p.bias_stride_q + k0 * p.bias_stride_k;
    for (int64_t c = 0; c < n; ++c) seg[c] += bias[c * p.bias_stride_k];
  }
  if (p.maybe_score_row != nullptr) p.maybe_score_row(p.score_functor, b, h, i, k0, n, seg);
  if (p.maybe_keep != nullptr) {
    const uint8_t* keep = p.maybe_keep + b * p.keep_stride_b + h * p.keep_stride_h +
                          i * p.keep_stride_q + k0 * p.keep_stride_k;
    for (int64_t c = 0; c < n; ++c)
      if (!keep[c * p.keep_stride_k]) seg[c] = kNegInf;
  }
  if (partial && p.maybe_mask_row != nullptr) p.maybe_mask_row(p.mask_functor, b, h, i, k0, n, seg);
}

// modify_row over a segment that may span several block-mask blocks: `modes` [num_kv_blocks]
// of the row's query block (null without a block mask: partial iff there is a mask functor).
static inline void modify_row_blocks(const FlashParams& p,
                                     int64_t b,
                                     int64_t h,
                                     int64_t i,
                                     int64_t j0,
                                     int64_t width,
                                     KeyRange kr,
                                     const uint8_t* modes,
                                     float* s) {
  if (modes == nullptr) {
    modify_row(p, b, h, i, j0, width, kr, p.maybe_mask_row != nullptr, s);
    return;
  }
  for (int64_t c0 = 0; c0 < width;) {
    const int64_t kb = (j0 + c0) / p.block_k;
    const int64_t c1 = std::min(width, (kb + 1) * p.block_k - j0);
    if (modes[kb] == kSkip) {
      fill_floats(s + c0, s + c1, kNegInf);
    } else {
      modify_row(p, b, h, i, j0 + c0, c1 - c0, kr, modes[kb] == kPartial, s + c0);
    }
    c0 = c1;
  }
}

// Whether any per-element work (beyond positional masking) is needed.
static inline bool has_element_mods(const FlashParams& p) {
  return p.maybe_alibi_slopes != nullptr || p.maybe_bias != nullptr ||
         p.maybe_score_row != nullptr || p.maybe_keep != nullptr;
}

}  // namespace
}  // namespace flash
}  // namespace kernels
}  // namespace attnkit
