#pragma once
// Streaming top-k of one query row, shared by every ISA path of the index top-k kernels (all
// static: the including translation units are compiled with different ISA flags). Scores
// arrive in ascending unit order; a heap keeps the best `cap` (score, unit) pairs with its
// worst pair at the root. Ties keep the earlier unit, as a stable descending sort does: a
// later unit enters only with a strictly greater score than the root, and among equal scores
// the root is the latest unit. -inf and NaN never enter.

#include "kernels/indexer/params.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace attnkit {
namespace kernels {
namespace indexer {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Order-preserving map of a float to uint32 (larger float, larger key; -0 below +0).
static inline uint32_t radix_key(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// The inverse of radix_key.
static inline float radix_value(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

struct RowTopK {
  // [cap] min-heap of packed (score, unit) keys: radix_key(score) in the high half, ~unit in the
  // low half, so one integer compare ranks by score, then earlier unit first.
  uint64_t* key = nullptr;
  int64_t cap = 0, size = 0;
  // The root's score once the heap is full (-inf before).
  float thr = kNegInf;
  // Units of more than one key: the running max of the unit being scanned.
  int64_t open_unit = -1;
  float open_max = kNegInf;

  void reset() {
    size = 0;
    thr = kNegInf;
    open_unit = -1;
    open_max = kNegInf;
  }

  // A later unit enters only with a score strictly above this.
  float threshold() const { return thr; }

  // Adds (s, u) with s > threshold(); u is later than every unit seen so far.
  void push(float s, int64_t u) {
    const uint64_t k = (uint64_t{radix_key(s)} << 32) | static_cast<uint32_t>(~u);
    int64_t n;
    if (size < cap) {
      n = size++;
      while (n > 0) {  // sift up
        const int64_t parent = (n - 1) / 2;
        if (key[parent] <= k) break;
        key[n] = key[parent];
        n = parent;
      }
    } else {
      n = 0;
      for (;;) {  // sift down from the root
        int64_t child = 2 * n + 1;
        if (child >= size) break;
        if (child + 1 < size && key[child + 1] < key[child]) ++child;
        if (key[child] >= k) break;
        key[n] = key[child];
        n = child;
      }
    }
    key[n] = k;
    if (size == cap) thr = radix_value(static_cast<uint32_t>(key[0] >> 32));
  }

  // Scores of n consecutive keys starting at key j0, in units of block_size keys.
  void offer(const float* s, int64_t n, int64_t j0, int64_t block_size) {
    if (block_size == 1) {
      float thr = threshold();
      for (int64_t c = 0; c < n; ++c) {
        if (s[c] > thr) {
          push(s[c], j0 + c);
          thr = threshold();
        }
      }
      return;
    }
    // std::max keeps open_max when s[c] is NaN
    for (int64_t c = 0; c < n; ++c) offer_unit_max(s[c], (j0 + c) / block_size);
  }

  // The max score of some keys of unit u (u not earlier than the unit being scanned).
  void offer_unit_max(float mx, int64_t u) {
    if (u != open_unit) {
      close_unit();
      open_unit = u;
    }
    open_max = std::max(open_max, mx);
  }

  // Offers the unit being scanned, if any.
  void close_unit() {
    if (open_unit >= 0 && open_max > threshold()) push(open_max, open_unit);
    open_unit = -1;
    open_max = kNegInf;
  }

  // out[0:cap_out] <- the kept units ascending, then -1.
  void write(int64_t* out, int64_t cap_out) {
    close_unit();
    for (int64_t n = 0; n < size; ++n) out[n] = ~static_cast<uint32_t>(key[n]);
    std::sort(out, out + size);
    std::fill(out + size, out + cap_out, int64_t{-1});
  }
};

#if defined(__AVX512F__)
// radix_key of 16 floats: negative -> ~bits, otherwise bits | sign.
static inline __m512i radix_keys16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  return _mm512_xor_si512(
      bits, _mm512_or_si512(_mm512_srai_epi32(bits, 31), _mm512_set1_epi32(INT32_MIN)));
}
// The lanes of x that are > -inf (not -inf, not NaN).
static inline __mmask16 eligible16(__m512 x) {
  return _mm512_cmp_ps_mask(x, _mm512_set1_ps(kNegInf), _CMP_GT_OQ);
}
#endif

// The selection loops are branch-free or vectorised: their conditions hold for a fraction of
// the entries in no pattern, which a branch predictor cannot follow.

// hist[key >> 21] += 1 for the eligible entries (> -inf, not NaN) of s[0:n]; returns how many.
static int64_t top_digit_histogram(const float* s, int64_t n, uint32_t* hist) {
  int64_t m = 0, j = 0;
#if defined(__AVX512F__)
  alignas(64) uint32_t digits[16];
  for (; j + 16 <= n; j += 16) {
    const __m512 x = _mm512_loadu_ps(s + j);
    const __mmask16 ok = eligible16(x);
    _mm512_store_si512(digits, _mm512_srli_epi32(radix_keys16(x), 21));
    for (int c = 0; c < 16; ++c) hist[digits[c]] += (ok >> c) & 1;
    m += __builtin_popcount(ok);
  }
#endif
  for (; j < n; ++j) {
    const bool ok = s[j] > kNegInf;
    hist[radix_key(s[j]) >> 21] += ok;
    m += ok;
  }
  return m;
}

// cand[0:return] <- the keys of the eligible entries of s[0:n] whose top 11 bits are `digit`.
static int64_t keys_with_top_digit(const float* s, int64_t n, uint32_t digit, uint32_t* cand) {
  int64_t m = 0, j = 0;
#if defined(__AVX512F__)
  const __m512i vdigit = _mm512_set1_epi32(static_cast<int>(digit));
  for (; j + 16 <= n; j += 16) {
    const __m512 x = _mm512_loadu_ps(s + j);
    const __m512i key = radix_keys16(x);
    const __mmask16 hit =
        _mm512_mask_cmpeq_epi32_mask(eligible16(x), _mm512_srli_epi32(key, 21), vdigit);
    // compress in registers, then a plain store: m + 16 <= j + 16 <= n stays in cand
    _mm512_storeu_si512(cand + m, _mm512_maskz_compress_epi32(hit, key));
    m += __builtin_popcount(hit);
  }
#endif
  for (; j < n; ++j) {
    const uint32_t key = radix_key(s[j]);
    cand[m] = key;
    m += s[j] > kNegInf && (key >> 21) == digit;
  }
  return m;
}

// The top K of s[0:n] by radix select, for lists of kRadixMinTopK and more, where a heap would
// pay log K per entering key: a histogram of the top 11 key bits finds the bin holding the
// K-th largest score, two more digits over that bin's entries alone pin its exact key, and one
// last scan keeps everything above it plus the earliest entries equal to it (the tie rule of
// RowTopK). -inf and NaN are never kept. out[0:cap_out] <- kept positions ascending, then -1.
// `cand` is scratch for n uint32 keys.
static void radix_top_k(
    const float* s, int64_t n, int64_t K, int64_t cap_out, uint32_t* cand, int64_t* out) {
  uint32_t hist[2048] = {0};
  int64_t taken = 0;
  if (top_digit_histogram(s, n, hist) <= K) {
    for (int64_t j = 0; j < n; ++j)
      if (s[j] > kNegInf) out[taken++] = j;
    std::fill(out + taken, out + cap_out, int64_t{-1});
    return;
  }
  // Digits of 11, 11 and 10 bits, most significant first; `prefix` holds the digits found and
  // `need` how many of the entries matching it are still to keep. The candidates (keys matching
  // the digits found so far) are cand[0:m].
  uint32_t prefix = 0;
  int64_t need = K, m = 0;
  const int shifts[3] = {21, 10, 0};
  const int widths[3] = {11, 11, 10};
  for (int level = 0; level < 3; ++level) {
    const int shift = shifts[level];
    const uint32_t mask = (1u << widths[level]) - 1;
    if (level > 0) {
      std::fill(hist, hist + 2048, 0u);
      for (int64_t c = 0; c < m; ++c) ++hist[(cand[c] >> shift) & mask];
    }
    int64_t above = 0;
    uint32_t digit = mask;
    for (;; --digit) {
      if (above + hist[digit] >= need) break;
      above += hist[digit];
    }
    need -= above;
    prefix |= digit << shift;
    if (level == 2) break;
    if (level == 0) {
      m = keys_with_top_digit(s, n, digit, cand);
      continue;
    }
    int64_t kept = 0;
    for (int64_t c = 0; c < m; ++c) {
      const uint32_t key = cand[c];
      cand[kept] = key;
      kept += ((key >> shift) & mask) == digit;
    }
    m = kept;
  }
  // prefix is the key of the K-th largest; keep `need` of the entries equal to it, earliest first.
  int64_t j = 0;
#if defined(__AVX512F__)
  // 16 entries at a time: compare their keys with the prefix, give the equal ones the places
  // left in order, and compress the kept positions into out (in registers, then a masked
  // store: a compressing store to memory is slow on some CPUs).
  const __m512i vprefix = _mm512_set1_epi32(static_cast<int>(prefix));
  const __m512i lanes_lo = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i lanes_hi = _mm512_add_epi64(lanes_lo, _mm512_set1_epi64(8));
  for (; j + 16 <= n; j += 16) {
    const __m512 x = _mm512_loadu_ps(s + j);
    const __mmask16 ok = eligible16(x);
    const __m512i key = radix_keys16(x);
    __mmask16 keep = _mm512_mask_cmpgt_epu32_mask(ok, key, vprefix);
    __mmask16 tie = _mm512_mask_cmpeq_epu32_mask(ok, key, vprefix);
    for (; tie != 0 && need > 0; --need) {
      keep |= tie & static_cast<__mmask16>(-tie);  // the earliest tie left
      tie &= tie - 1;
    }
    const __m512i base = _mm512_set1_epi64(j);
    const __mmask8 lo = static_cast<__mmask8>(keep), hi = static_cast<__mmask8>(keep >> 8);
    const int n_lo = __builtin_popcount(lo), n_hi = __builtin_popcount(hi);
    _mm512_mask_storeu_epi64(out + taken, static_cast<__mmask8>((1u << n_lo) - 1),
                             _mm512_maskz_compress_epi64(lo, _mm512_add_epi64(base, lanes_lo)));
    taken += n_lo;
    _mm512_mask_storeu_epi64(out + taken, static_cast<__mmask8>((1u << n_hi) - 1),
                             _mm512_maskz_compress_epi64(hi, _mm512_add_epi64(base, lanes_hi)));
    taken += n_hi;
  }
#endif
  // taken < K keeps the store in bounds: nothing is kept after the K-th.
  for (; j < n && taken < K; ++j) {
    const bool ok = s[j] > kNegInf;  // a NaN's key can exceed the prefix
    const uint32_t key = radix_key(s[j]);
    const bool tie = ok && key == prefix && need > 0;
    out[taken] = j;
    taken += (ok && key > prefix) || tie;
    need -= tie;
  }
  std::fill(out + taken, out + cap_out, int64_t{-1});
}

// Lists at least this long are selected by radix_top_k over a whole scored row; shorter ones by
// the streaming heap. At T = 16K (index_topk alone, causal) the heap was faster at top-8 and
// top-16 (0.31 against 0.37 s), even at top-32, and slower at top-64 (0.40 against 0.33 s).
constexpr int64_t kRadixMinTopK = 48;

// Keys [0, hi) of row i may be scored under the causal rule and the key limit.
static inline int64_t causal_limit(const IndexTopkParams& p, int64_t i) {
  int64_t hi = p.seq_len_kv;
  if (p.causal) hi = std::max<int64_t>(0, std::min(hi, i + (p.seq_len_kv - p.seq_len_q) + 1));
  if (p.maybe_key_limit != nullptr) hi = std::max<int64_t>(0, std::min(hi, p.maybe_key_limit[i]));
  return hi;
}

static inline float load_value(const void* base, IndexDtype dtype, int64_t off) {
  if (dtype == IndexDtype::kFloat32) return static_cast<const float*>(base)[off];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[off]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

}  // namespace
}  // namespace indexer
}  // namespace kernels
}  // namespace attnkit
