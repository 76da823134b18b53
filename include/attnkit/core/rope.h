#pragma once
// Rotary position embeddings (Su et al., 2021, "RoFormer"), in the two channel layouts found in
// public checkpoints, with partial rotation, a position offset for decoding, and the NTK, linear
// and YaRN (Peng et al., 2023) frequency scalings.

#include <torch/arg.h>
#include <torch/types.h>

#include <string>

namespace attnkit {

/// How the rotated channels are paired.
enum class RopeStyle {
  /// Rotate-half (GPT-NeoX, HF Llama/Qwen): channel i pairs with i + rope_dim/2.
  kHalf,
  /// Interleaved (GPT-J, Meta Llama, DeepSeek): channel 2i pairs with 2i + 1.
  kInterleaved,
};

/// Which channels of a head rotate when rope_dim < head_dim.
enum class RopeChannels {
  /// The first rope_dim channels rotate: [rope | nope] (d9d GQA, Qwen 3.5, attnhut MiniMax).
  kFirst,
  /// The last rope_dim channels rotate: [nope | rope] (DeepSeek MLA layout).
  kLast,
};

/// Frequency scaling for context extension (docs/catalog.md, "Rotary embeddings").
enum class RopeScaling {
  kNone,    ///< inv_freq_i = theta^(-2i/d)
  kLinear,  ///< inv_freq / factor (position interpolation)
  kNtk,     ///< theta * factor^(d/(d-2)) as the base
  kYarn,    ///< ramp between inv_freq and inv_freq/factor by wavelength; cos/sin scaled by mscale
};

const char* to_string(RopeStyle style);
const char* to_string(RopeChannels channels);
const char* to_string(RopeScaling scaling);

/// Options for rotary embeddings.
/// Example:
///   RopeOptions().dim(32).style(RopeStyle::kHalf).theta(1e6)
struct RopeOptions {
  /// Number of rotated channels per head (even). 0 means the whole head. Default: 0
  TORCH_ARG(int64_t, dim) = 0;
  /// Channel pairing. Default: RopeStyle::kHalf
  TORCH_ARG(RopeStyle, style) = RopeStyle::kHalf;
  /// Which channels rotate when dim < head_dim. Default: RopeChannels::kFirst
  TORCH_ARG(RopeChannels, channels) = RopeChannels::kFirst;
  /// Base of the inverse frequencies. Default: 10000
  TORCH_ARG(double, theta) = 10000.0;
  /// Frequency scaling. Default: RopeScaling::kNone
  TORCH_ARG(RopeScaling, scaling) = RopeScaling::kNone;
  /// Scaling factor for kLinear, kNtk and kYarn. Default: 1
  TORCH_ARG(double, factor) = 1.0;
  /// YaRN: rotations per context above which frequencies are kept. Default: 32
  TORCH_ARG(double, beta_fast) = 32.0;
  /// YaRN: rotations per context below which frequencies are interpolated. Default: 1
  TORCH_ARG(double, beta_slow) = 1.0;
  /// YaRN: the context length the model was trained with. Default: 4096
  TORCH_ARG(int64_t, original_max_position_embeddings) = 4096;
};

std::ostream& operator<<(std::ostream& stream, const RopeOptions& options);

/// A rotary embedding bound to a head width. Holds no parameters; cos/sin are computed (in double,
/// then cast) for the positions of each call.
/// Example:
///   RotaryEmbedding rope(RopeOptions().dim(32), /*head_dim=*/64, "MyAttention");
///   torch::Tensor q_rot = rope.apply(q, /*offset=*/state.length());   // q: [B, T, H, 64]
class RotaryEmbedding {
 public:
  /// `owner` names the mechanism in error messages.
  RotaryEmbedding(RopeOptions options,
                  int64_t head_dim,
                  const std::string& owner = "RotaryEmbedding");

  /// x: [B, T, H, head_dim] (or [B, T, head_dim] for one shared head); token t sits at position
  /// offset + t. Returns a tensor of the same shape and dtype with the rope channels rotated.
  torch::Tensor apply(const torch::Tensor& x, int64_t offset = 0) const;

  /// Inverse frequencies after scaling: [rope_dim / 2], float64.
  const torch::Tensor& inv_freq() const { return inv_freq_; }
  /// YaRN's attention factor applied to cos and sin (1 for the other scalings).
  double mscale() const { return mscale_; }
  /// Number of rotated channels.
  int64_t rope_dim() const { return rope_dim_; }
  int64_t head_dim() const { return head_dim_; }
  const RopeOptions& options() const { return options_; }

 private:
  RopeOptions options_;
  int64_t head_dim_ = 0;
  int64_t rope_dim_ = 0;
  double mscale_ = 1.0;
  torch::Tensor inv_freq_;
};

/// Inverse frequencies [rope_dim / 2] (float64) for `options` and `rope_dim`, and YaRN's mscale.
torch::Tensor rope_inverse_frequencies(const RopeOptions& options,
                                       int64_t rope_dim,
                                       double* mscale);

}  // namespace attnkit
