#pragma once
// Naive re-implementations written from docs/catalog.md, with explicit loops
// and no attnkit code, for comparisons on shared weights.

#include <torch/torch.h>

#include <vector>

namespace attnkit {
namespace testing {

/// Softmax attention by explicit loops over (b, h, i, j), in double.
/// q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv]; causal bottom-right aligned;
/// window_left < 0 means unbounded; sinks [Hq] or undefined. Returns [B, Hq, Tq, Dv] (double).
torch::Tensor naive_attention(const torch::Tensor& q,
                              const torch::Tensor& k,
                              const torch::Tensor& v,
                              double scale,
                              bool causal,
                              int64_t window_left = -1,
                              const torch::Tensor& sinks = {});

/// Rotate-half RoPE on the first `rope_dim` channels of x [B, T, H, hd] at positions
/// offset + t, angles theta^(-2i/rope_dim) * position (double).
torch::Tensor naive_rope_half(const torch::Tensor& x,
                              int64_t rope_dim,
                              double theta,
                              int64_t offset = 0);

/// Interleaved-pair RoPE on all channels of x [B, T, H, d] (double).
torch::Tensor naive_rope_interleaved(const torch::Tensor& x, double theta, int64_t offset = 0);

/// RMSNorm over the last dim with weight w (applied as w, or 1 + w when zero_centered).
torch::Tensor naive_rms_norm(const torch::Tensor& x,
                             const torch::Tensor& w,
                             double eps,
                             bool zero_centered = false);

}  // namespace testing
}  // namespace attnkit
