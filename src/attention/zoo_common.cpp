#include "attention/zoo_common.h"

#include <attnkit/functional/dot_product_attention.h>

#include "attention/dense_common.h"

#include <algorithm>

namespace attnkit {
namespace detail {

void register_zoo_layers(torch::nn::Module& module,
                         int64_t dim,
                         bool bias,
                         torch::nn::Linear& q_proj,
                         torch::nn::Linear& k_proj,
                         torch::nn::Linear& v_proj,
                         torch::nn::Linear& o_proj) {
  auto linear = [&]() { return torch::nn::Linear(torch::nn::LinearOptions(dim, dim).bias(bias)); };
  q_proj = module.register_module("q_proj", linear());
  k_proj = module.register_module("k_proj", linear());
  v_proj = module.register_module("v_proj", linear());
  o_proj = module.register_module("o_proj", linear());
}

void check_temperature_and_dropout(const char* mechanism, double temperature, double dropout) {
  TORCH_CHECK(temperature > 0, mechanism, ": temperature must be positive, got ", temperature);
  TORCH_CHECK(dropout >= 0 && dropout < 1, mechanism, ": dropout must be in [0, 1), got ", dropout);
}

void check_heads(const char* mechanism, int64_t dim, int64_t num_heads) {
  TORCH_CHECK(dim > 0, mechanism, ": dim must be positive, got ", dim);
  TORCH_CHECK(num_heads > 0, mechanism, ": num_heads must be positive, got ", num_heads);
  TORCH_CHECK(dim % num_heads == 0, mechanism, ": dim (", dim, ") must be divisible by num_heads (",
              num_heads, ")");
}

torch::Tensor project_heads(torch::nn::Linear layer, const torch::Tensor& x, int64_t heads) {
  const int64_t B = x.size(0), T = x.size(1);
  torch::Tensor y = layer->forward(x);  // [B, T, H * hd]
  return y.view({B, T, heads, y.size(2) / heads}).transpose(1, 2);
}

torch::Tensor apply_rope(const RotaryEmbedding* rope, const torch::Tensor& heads, int64_t offset) {
  if (!rope) return heads;
  return rope->apply(heads.transpose(1, 2), offset).transpose(1, 2);  // apply takes [B, T, H, hd]
}

void print_rope(std::ostream& stream, const std::optional<RopeOptions>& rope) {
  if (rope) {
    stream << *rope;
  } else {
    stream << "none";
  }
}

torch::Tensor merge_heads(const torch::Tensor& heads) {
  const int64_t B = heads.size(0), H = heads.size(1), T = heads.size(2), hd = heads.size(3);
  return heads.transpose(1, 2).reshape({B, T, H * hd});
}

void merge_attn_mask(const std::string& mechanism,
                     const torch::Tensor& attn_mask,
                     int64_t batch_size,
                     int64_t num_heads,
                     int64_t seq_len,
                     DotProductAttentionOptions& options) {
  if (!attn_mask.defined()) return;
  DotProductAttentionOptions user;
  add_attn_mask(mechanism, attn_mask, batch_size, num_heads, seq_len, user);
  if (user.mask().defined()) {
    options.mask(options.mask().defined() ? options.mask() & user.mask() : user.mask());
  }
  if (user.bias().defined()) {
    options.bias(options.bias().defined() ? options.bias() + user.bias() : user.bias());
  }
}

AttentionOutput zoo_attention(const std::string& mechanism,
                              ZooLayers layers,
                              int64_t num_heads,
                              const torch::Tensor& x,
                              const torch::Tensor& attn_mask,
                              DotProductAttentionOptions options,
                              DecodeState* state,
                              bool need_weights,
                              int64_t cache_window) {
  const int64_t B = x.size(0), T = x.size(1), H = num_heads;
  const int64_t offset = state ? state->length() : 0;
  torch::Tensor q = apply_rope(layers.rope, project_heads(layers.q_proj, x, H), offset);
  torch::Tensor k = apply_rope(layers.rope, project_heads(layers.k_proj, x, H), offset);
  torch::Tensor v = project_heads(layers.v_proj, x, H);  // q, k, v: [B, H, T, hd]
  if (state && cache_window < 0) {
    k = state->append("k", k, 2);  // [B, H, L, hd]
    v = state->append("v", v, 2);
    state->advance(T);
  } else if (state) {
    // Sliding-window cache: the previous chunk's last cache_window tokens, then this chunk.
    if (state->contains("k")) {
      k = torch::cat({state->get("k"), k}, 2);  // [B, H, cached + T, hd]
      v = torch::cat({state->get("v"), v}, 2);
    }
    const int64_t keep = std::min(cache_window, k.size(2));
    state->set("k", k.narrow(2, k.size(2) - keep, keep).clone());
    state->set("v", v.narrow(2, v.size(2) - keep, keep).clone());
    state->advance(T);
  }
  merge_attn_mask(mechanism, attn_mask, B, H, T, options);
  options.need_weights(need_weights);
  AttentionResult r = functional::dot_product_attention(q, k, v, options);
  return AttentionOutput{layers.o_proj->forward(merge_heads(r.output)), r.weights};
}

}  // namespace detail
}  // namespace attnkit
