#pragma once
// Shared plumbing of the attzoo-family mechanisms (docs/catalog.md): multi-head q/k/v/o
// projections of width dim, per-call masks merged into a pattern mask, and the attention call.
// Private to the library.

#include <attnkit/attention/attention.h>
#include <attnkit/core/reference_attention.h>
#include <attnkit/core/rope.h>

#include <torch/nn/modules/linear.h>

#include <string>

namespace attnkit {
namespace detail {

/// The four [dim, dim] projections of a multi-head module, and its rotary embedding (null for
/// none).
struct ZooLayers {
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  const RotaryEmbedding* rope = nullptr;
};

/// Rotates heads [B, H, T, hd] at positions offset + t; returns them unchanged without rope.
torch::Tensor apply_rope(const RotaryEmbedding* rope, const torch::Tensor& heads, int64_t offset);

/// Prints an optional rope as its options or "none".
void print_rope(std::ostream& stream, const std::optional<RopeOptions>& rope);

/// Registers q_proj, k_proj, v_proj, o_proj (each Linear(dim, dim)) on `module` and stores them
/// in the module's members of those names.
void register_zoo_layers(torch::nn::Module& module,
                         int64_t dim,
                         bool bias,
                         torch::nn::Linear& q_proj,
                         torch::nn::Linear& k_proj,
                         torch::nn::Linear& v_proj,
                         torch::nn::Linear& o_proj);

/// Raises unless dim and num_heads are positive and dim is divisible by num_heads.
void check_heads(const char* mechanism, int64_t dim, int64_t num_heads);

/// Raises unless temperature > 0 and 0 <= dropout < 1.
void check_temperature_and_dropout(const char* mechanism, double temperature, double dropout);

/// x [B, T, dim] -> [B, H, T, dim / H] through `layer`.
torch::Tensor project_heads(torch::nn::Linear layer, const torch::Tensor& x, int64_t heads);

/// [B, H, T, hd] -> [B, T, H * hd].
torch::Tensor merge_heads(const torch::Tensor& heads);

/// Adds a per-call attn_mask ([T, T], [B, T, T] or [B, 1|H, T, T]; bool keep or additive float)
/// to `options`, AND-ing a bool mask with the mask already there and adding a float one to the
/// bias already there.
void merge_attn_mask(const std::string& mechanism,
                     const torch::Tensor& attn_mask,
                     int64_t batch_size,
                     int64_t num_heads,
                     int64_t seq_len,
                     DotProductAttentionOptions& options);

/// Multi-head softmax attention of x against itself (or, with `state`, against the cached keys
/// and values plus this chunk): project, rotate q and k (at the state's offset), call
/// functional::dot_product_attention with `options` (pattern mask, bias, window already set), merge
/// the per-call attn_mask, project out. With a state and cache_window >= 0, only the last
/// cache_window keys and values are kept between calls (a sliding-window cache); with cache_window
/// < 0 the cache grows.
AttentionOutput zoo_attention(const std::string& mechanism,
                              ZooLayers layers,
                              int64_t num_heads,
                              const torch::Tensor& x,
                              const torch::Tensor& attn_mask,
                              DotProductAttentionOptions options,
                              DecodeState* state,
                              bool need_weights,
                              int64_t cache_window = -1);

}  // namespace detail
}  // namespace attnkit
