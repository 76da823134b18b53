#include <attnkit/attention/linear_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <algorithm>
#include <vector>

namespace attnkit {

namespace {
constexpr const char* kName = "LinearAttention";
}

const char* to_string(LinearFeatureMap map) {
  switch (map) {
    case LinearFeatureMap::kEluPlusOne:
      return "elu_plus_one";
    case LinearFeatureMap::kRelu:
      return "relu";
  }
  return "unknown";
}

LinearAttentionOptions::LinearAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

LinearAttentionImpl::LinearAttentionImpl(LinearAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.feature_dim() >= 0, kName, ": feature_dim must be >= 0 (0 = dim / num_heads), got ",
              o.feature_dim());
  if (o.feature_dim() == 0) options.feature_dim(o.dim() / o.num_heads());
  TORCH_CHECK(o.eps() > 0, kName, ": eps must be positive, got ", o.eps());
  TORCH_CHECK(o.chunk_size() > 0, kName, ": chunk_size must be positive, got ", o.chunk_size());
  reset();
}

LinearAttentionImpl::LinearAttentionImpl(int64_t dim, int64_t num_heads)
    : LinearAttentionImpl(LinearAttentionOptions(dim, num_heads)) {}

void LinearAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim(), HF = o.num_heads() * o.feature_dim();
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(o.bias()));
  };
  q_proj = register_module("q_proj", linear(D, HF));
  k_proj = register_module("k_proj", linear(D, HF));
  v_proj = register_module("v_proj", linear(D, D));
  o_proj = register_module("o_proj", linear(D, D));
  // Validates rope.dim against feature_dim once, at construction.
  if (o.rope()) rope_.emplace(*o.rope(), o.feature_dim(), kName);
}

void LinearAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void LinearAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::LinearAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", feature_dim=" << o.feature_dim() << ", feature_map=" << to_string(o.feature_map())
         << ", causal=" << detail::str(o.causal()) << ", eps=" << o.eps()
         << ", chunk_size=" << o.chunk_size() << ", bias=" << detail::str(o.bias()) << ", rope=";
  detail::print_rope(stream, o.rope());
  stream << ")";
}

torch::Tensor LinearAttentionImpl::features(const torch::Tensor& x) const {
  switch (options.feature_map()) {
    case LinearFeatureMap::kEluPlusOne:
      return torch::elu(x) + 1.0;
    case LinearFeatureMap::kRelu:
      return torch::relu(x);
  }
  TORCH_CHECK(false, kName, ": unknown feature_map");
}

AttentionOutput LinearAttentionImpl::run(const torch::Tensor& x,
                                         const torch::Tensor& attn_mask,
                                         DecodeState* state,
                                         bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1), H = o.num_heads();
  const int64_t F = o.feature_dim(), Dv = o.dim() / H;
  const int64_t offset = state ? state->length() : 0;
  const RotaryEmbedding* rope = rope_ ? &*rope_ : nullptr;
  torch::Tensor q = features(detail::apply_rope(rope, detail::project_heads(q_proj, x, H), offset));
  torch::Tensor k = features(detail::apply_rope(rope, detail::project_heads(k_proj, x, H), offset));
  torch::Tensor v = detail::project_heads(v_proj, x, H);  // q, k: [B, H, T, F]; v: [B, H, T, Dv]
  const double eps = o.eps();

  torch::Tensor out, weights;
  if (attn_mask.defined() || need_weights) {
    // Quadratic form: a_ij = keep_ij q_i . k_j, out_i = sum_j a_ij v_j / (sum_j a_ij + eps).
    torch::Tensor a = torch::matmul(q, k.transpose(-1, -2));  // [B, H, T, T]
    DotProductAttentionOptions mask;
    detail::add_attn_mask(kName, attn_mask, B, H, T, mask);
    TORCH_CHECK(!mask.bias().defined(), kName,
                ": expected a bool attn_mask (true = attend); additive float masks have no "
                "meaning for linear attention, got dtype ",
                attn_mask.scalar_type());
    if (mask.mask().defined()) a = a * mask.mask().to(a.scalar_type());
    if (o.causal()) a = a.tril();
    torch::Tensor w = a / (a.sum(-1, /*keepdim=*/true) + eps);
    out = torch::matmul(w, v);
    if (need_weights) weights = w;
  }
  if (!attn_mask.defined()) {
    if (!o.causal()) {
      torch::Tensor S = torch::matmul(k.transpose(-1, -2), v);  // [B, H, F, Dv]
      torch::Tensor z = k.sum(2).unsqueeze(-1);                 // [B, H, F, 1]
      out = torch::matmul(q, S) / (torch::matmul(q, z) + eps);
    } else {
      // Chunked prefix sums from the running state (S, z).
      torch::Tensor S, z;
      if (state && state->contains("S")) {
        S = state->get("S");  // [B, H, F, Dv]
        z = state->get("z");  // [B, H, F]
      } else {
        S = torch::zeros({B, H, F, Dv}, q.options());
        z = torch::zeros({B, H, F}, q.options());
      }
      std::vector<torch::Tensor> chunks;
      for (int64_t t0 = 0; t0 < T; t0 += o.chunk_size()) {
        const int64_t len = std::min(o.chunk_size(), T - t0);
        torch::Tensor qc = q.narrow(2, t0, len), kc = k.narrow(2, t0, len);
        torch::Tensor vc = v.narrow(2, t0, len);
        torch::Tensor a = torch::matmul(qc, kc.transpose(-1, -2)).tril();  // [B, H, len, len]
        torch::Tensor num = torch::matmul(qc, S) + torch::matmul(a, vc);   // [B, H, len, Dv]
        torch::Tensor den = torch::matmul(qc, z.unsqueeze(-1)) + a.sum(-1, /*keepdim=*/true);
        chunks.push_back(num / (den + eps));
        S = S + torch::matmul(kc.transpose(-1, -2), vc);
        z = z + kc.sum(2);
      }
      out = torch::cat(chunks, 2);
      if (state) {
        state->set("S", S);
        state->set("z", z);
        state->advance(T);
      }
    }
  }
  return AttentionOutput{o_proj(detail::merge_heads(out)), weights};
}

torch::Tensor LinearAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor LinearAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor LinearAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState LinearAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput LinearAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                      const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
