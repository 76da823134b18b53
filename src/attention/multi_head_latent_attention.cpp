#include <attnkit/attention/multi_head_latent_attention.h>

#include <attnkit/functional/dot_product_attention.h>

#include "attention/dense_common.h"

namespace attnkit {

namespace {
constexpr const char* kName = "MultiHeadLatentAttention";
}

MultiHeadLatentAttentionOptions::MultiHeadLatentAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

MultiHeadLatentAttentionImpl::MultiHeadLatentAttentionImpl(MultiHeadLatentAttentionOptions options_)
    : options(std::move(options_)) {
  auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, kName, ": num_heads must be positive, got ", o.num_heads());
  const bool any_default = o.kv_lora_rank() == 0 || o.qk_nope_head_dim() == 0 ||
                           o.qk_rope_head_dim() == 0 || o.v_head_dim() == 0;
  if (any_default) {
    TORCH_CHECK(o.dim() % o.num_heads() == 0, kName, ": dim (", o.dim(),
                ") must be divisible by num_heads (", o.num_heads(),
                ") to derive the default widths; set kv_lora_rank, qk_nope_head_dim, "
                "qk_rope_head_dim and v_head_dim explicitly");
  }
  const int64_t hd = o.dim() / o.num_heads();
  if (o.kv_lora_rank() == 0) o.kv_lora_rank(o.dim() / 4);
  if (o.qk_nope_head_dim() == 0) o.qk_nope_head_dim(hd / 2);
  if (o.qk_rope_head_dim() == 0) o.qk_rope_head_dim(hd / 2);
  if (o.v_head_dim() == 0) o.v_head_dim(hd);
  if (o.q_lora_rank()) {
    TORCH_CHECK(*o.q_lora_rank() > 0, kName, ": q_lora_rank must be positive, got ",
                *o.q_lora_rank());
  }
  TORCH_CHECK(o.kv_lora_rank() > 0, kName, ": kv_lora_rank must be positive, got ",
              o.kv_lora_rank());
  TORCH_CHECK(o.qk_nope_head_dim() > 0, kName, ": qk_nope_head_dim must be positive, got ",
              o.qk_nope_head_dim());
  TORCH_CHECK(o.qk_rope_head_dim() > 0, kName, ": qk_rope_head_dim must be positive, got ",
              o.qk_rope_head_dim());
  TORCH_CHECK(o.v_head_dim() > 0, kName, ": v_head_dim must be positive, got ", o.v_head_dim());
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, kName, ": dropout must be in [0, 1), got ",
              o.dropout());
  TORCH_CHECK(o.rope().dim() == 0 || o.rope().dim() == o.qk_rope_head_dim(), kName, ": rope.dim (",
              o.rope().dim(), ") must be 0 or qk_rope_head_dim (", o.qk_rope_head_dim(), ")");
  o.rope().dim(o.qk_rope_head_dim());
  reset();
}

MultiHeadLatentAttentionImpl::MultiHeadLatentAttentionImpl(int64_t dim, int64_t num_heads)
    : MultiHeadLatentAttentionImpl(MultiHeadLatentAttentionOptions(dim, num_heads)) {}

void MultiHeadLatentAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim(), H = o.num_heads(), nope = o.qk_nope_head_dim();
  const int64_t rope = o.qk_rope_head_dim(), vd = o.v_head_dim(), kv_lora = o.kv_lora_rank();
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(o.bias()));
  };
  auto norm = [&](int64_t width) { return RMSNorm(RMSNormOptions(width).eps(o.norm_eps())); };
  if (o.q_lora_rank()) {
    q_a_proj = register_module("q_a_proj", linear(D, *o.q_lora_rank()));
    q_a_layernorm = register_module("q_a_layernorm", norm(*o.q_lora_rank()));
    q_b_proj = register_module("q_b_proj", linear(*o.q_lora_rank(), H * (nope + rope)));
  } else {
    q_proj = register_module("q_proj", linear(D, H * (nope + rope)));
  }
  kv_a_proj_with_mqa = register_module("kv_a_proj_with_mqa", linear(D, kv_lora + rope));
  kv_a_layernorm = register_module("kv_a_layernorm", norm(kv_lora));
  kv_b_proj = register_module("kv_b_proj", linear(kv_lora, H * (nope + vd)));
  o_proj = register_module("o_proj", linear(H * vd, D));
  // The rope key and query channels: always the whole rope part, so kFirst of that part.
  rope_.emplace(RopeOptions(o.rope()).channels(RopeChannels::kFirst), rope, kName);
}

void MultiHeadLatentAttentionImpl::reset_parameters() {
  for (auto& child : children()) {
    if (auto* linear = child->as<torch::nn::Linear>()) linear->reset_parameters();
    if (auto* norm = child->as<RMSNorm>()) norm->reset_parameters();
  }
}

void MultiHeadLatentAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::MultiHeadLatentAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", q_lora_rank=";
  if (o.q_lora_rank()) {
    stream << *o.q_lora_rank();
  } else {
    stream << "none";
  }
  stream << ", kv_lora_rank=" << o.kv_lora_rank() << ", qk_nope_head_dim=" << o.qk_nope_head_dim()
         << ", qk_rope_head_dim=" << o.qk_rope_head_dim() << ", v_head_dim=" << o.v_head_dim()
         << ", norm_eps=" << o.norm_eps() << ", causal=" << detail::str(o.causal())
         << ", dropout=" << o.dropout() << ", bias=" << detail::str(o.bias()) << ", " << o.rope()
         << ")";
}

AttentionOutput MultiHeadLatentAttentionImpl::run(const torch::Tensor& x,
                                                  const torch::Tensor& attn_mask,
                                                  DecodeState* state,
                                                  bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), kv_a_proj_with_mqa->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1), H = o.num_heads();
  const int64_t nope = o.qk_nope_head_dim(), rope = o.qk_rope_head_dim(), vd = o.v_head_dim();
  const int64_t kv_lora = o.kv_lora_rank();
  const int64_t offset = state ? state->length() : 0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(nope + rope));

  // queries: [B, T, H, nope + rope] split into [q_nope | q_rope]
  torch::Tensor q =
      (q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)))).view({B, T, H, nope + rope});
  torch::Tensor q_nope = q.narrow(-1, 0, nope);
  torch::Tensor q_rope = rope_->apply(q.narrow(-1, nope, rope), offset);

  // latent and the shared rope key: [B, T, kv_lora], [B, T, rope]
  torch::Tensor compressed = kv_a_proj_with_mqa(x);
  torch::Tensor latent = kv_a_layernorm(compressed.narrow(-1, 0, kv_lora));
  torch::Tensor k_rope = rope_->apply(compressed.narrow(-1, kv_lora, rope), offset);

  DotProductAttentionOptions attn;
  attn.scale(scale)
      .causal(o.causal())
      .dropout(is_training() ? o.dropout() : 0.0)
      .need_weights(need_weights);
  detail::add_attn_mask(kName, attn_mask, B, H, T, attn);

  torch::Tensor out;  // [B, H, T, vd]
  AttentionResult r;
  if (!state) {
    // Rebuild per-head keys and values: kv_b_proj(latent) -> [B, T, H, nope + vd] = [k_nope | v]
    torch::Tensor kv = kv_b_proj(latent).view({B, T, H, nope + vd});
    torch::Tensor k =
        torch::cat({kv.narrow(-1, 0, nope), k_rope.unsqueeze(2).expand({B, T, H, rope})}, -1);
    torch::Tensor v = kv.narrow(-1, nope, vd);
    torch::Tensor q_full = torch::cat({q_nope, q_rope}, -1);
    r = functional::dot_product_attention(q_full.transpose(1, 2), k.transpose(1, 2),
                                          v.transpose(1, 2), attn);
    out = r.output;
  } else {
    // Absorbed form over the cache. With W_uk, W_uv the per-head blocks of kv_b_proj:
    //   q_nope . (W_uk c) = (W_uk^T q_nope) . c   and   sum_j a_j W_uv c_j = W_uv (sum_j a_j c_j),
    // so attention runs as MQA over [latent | rope key] with values = latent, and W_uv is applied
    // to the (kv_lora-wide) result.
    // With a kv_b_proj bias [b_k | b_v]: q_nope . b_k is one constant per query, which the
    // softmax cancels; sum_j a_j b_v = b_v sum_j a_j, so the values get a ones channel that
    // carries sum_j a_j (1 without dropout).
    torch::Tensor latent_all = state->append("latent", latent, 1);    // [B, Tk, kv_lora]
    torch::Tensor k_rope_all = state->append("rope_key", k_rope, 1);  // [B, Tk, rope]
    state->advance(T);
    torch::Tensor w = kv_b_proj->weight.view({H, nope + vd, kv_lora});
    torch::Tensor w_uk = w.narrow(1, 0, nope);                                 // [H, nope, kv_lora]
    torch::Tensor w_uv = w.narrow(1, nope, vd);                                // [H, vd, kv_lora]
    torch::Tensor q_latent = torch::einsum("bthn,hnc->bhtc", {q_nope, w_uk});  // [B, H, T, kv_lora]
    torch::Tensor q_abs = torch::cat({q_latent, q_rope.transpose(1, 2)}, -1);
    torch::Tensor k_abs = torch::cat({latent_all, k_rope_all}, -1).unsqueeze(1);  // [B, 1, Tk, ·]
    const bool value_bias = kv_b_proj->bias.defined();
    torch::Tensor v_abs = latent_all;  // [B, Tk, kv_lora (+ 1)]
    if (value_bias) {
      v_abs = torch::cat({latent_all, torch::ones_like(latent_all.narrow(-1, 0, 1))}, -1);
    }
    r = functional::dot_product_attention(q_abs, k_abs, v_abs.unsqueeze(1), attn);
    // out <- W_uv (sum_j a_j c_j) (+ b_v sum_j a_j): [B, H, T, vd]
    out = torch::einsum("bhtc,hvc->bhtv", {r.output.narrow(-1, 0, kv_lora), w_uv});
    if (value_bias) {
      torch::Tensor b_v = kv_b_proj->bias.view({H, nope + vd}).narrow(1, nope, vd);  // [H, vd]
      out = out + r.output.narrow(-1, kv_lora, 1) * b_v.view({1, H, 1, vd});
    }
  }
  out = out.transpose(1, 2).reshape({B, T, H * vd});
  return AttentionOutput{o_proj(out), r.weights};
}

torch::Tensor MultiHeadLatentAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor MultiHeadLatentAttentionImpl::forward(const torch::Tensor& x,
                                                    const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor MultiHeadLatentAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState MultiHeadLatentAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput MultiHeadLatentAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                               const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
