#include <attnkit/attention/lsh_attention.h>

#include <attnkit/functional/dot_product_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace attnkit {

namespace {
constexpr const char* kName = "LSHAttention";
}

LSHAttentionOptions::LSHAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

LSHAttentionImpl::LSHAttentionImpl(LSHAttentionOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.bucket_size() > 0, kName, ": bucket_size must be positive, got ", o.bucket_size());
  TORCH_CHECK(o.num_hashes() > 0, kName, ": num_hashes must be positive, got ", o.num_hashes());
  detail::check_temperature_and_dropout(kName, o.temperature(), o.dropout());
  reset();
}

LSHAttentionImpl::LSHAttentionImpl(int64_t dim, int64_t num_heads)
    : LSHAttentionImpl(LSHAttentionOptions(dim, num_heads)) {}

void LSHAttentionImpl::reset() {
  detail::register_zoo_layers(*this, options.dim(), options.bias(), q_proj, k_proj, v_proj, o_proj);
  // Validates rope.dim against head_dim once, at construction.
  if (options.rope()) rope_.emplace(*options.rope(), options.dim() / options.num_heads(), kName);
}

void LSHAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void LSHAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::LSHAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", bucket_size=" << o.bucket_size() << ", num_hashes=" << o.num_hashes()
         << ", seed=" << o.seed() << ", temperature=" << o.temperature()
         << ", dropout=" << o.dropout() << ", bias=" << detail::str(o.bias()) << ", rope=";
  detail::print_rope(stream, o.rope());
  stream << ")";
}

torch::Tensor LSHAttentionImpl::rotations(int64_t seq_len) const {
  TORCH_CHECK(seq_len > 0, kName, ": seq_len must be positive, got ", seq_len);
  const int64_t num_buckets =
      std::max<int64_t>(1, (seq_len + options.bucket_size() - 1) / options.bucket_size());
  const int64_t H = options.num_heads(), hd = options.dim() / H;
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(options.seed()));
  return torch::randn({options.num_hashes(), H, hd, (num_buckets + 1) / 2}, gen,
                      torch::TensorOptions().dtype(torch::kFloat));
}

torch::Tensor LSHAttentionImpl::hash(const torch::Tensor& q) const {
  torch::NoGradGuard no_grad;
  const int64_t T = q.size(2);
  const int64_t num_buckets =
      std::max<int64_t>(1, (T + options.bucket_size() - 1) / options.bucket_size());
  torch::Tensor rot = rotations(T).to(q.device(), q.scalar_type());  // [R, H, hd, nb/2]
  // [1, B, H, T, hd] x [R, 1, H, hd, nb/2] -> [R, B, H, T, nb/2]
  torch::Tensor proj = torch::matmul(q.unsqueeze(0), rot.unsqueeze(1));
  torch::Tensor both = torch::cat({proj, -proj}, -1).narrow(-1, 0, num_buckets);
  return both.argmax(-1);  // [R, B, H, T]
}

torch::Tensor LSHAttentionImpl::buckets(const torch::Tensor& x) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  const RotaryEmbedding* rope = rope_ ? &*rope_ : nullptr;
  return hash(detail::apply_rope(rope, detail::project_heads(q_proj, x, options.num_heads()), 0));
}

AttentionOutput LSHAttentionImpl::run(const torch::Tensor& x,
                                      const torch::Tensor& attn_mask,
                                      bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1), H = o.num_heads();
  const double head_dim = static_cast<double>(o.dim() / H);
  const RotaryEmbedding* rope = rope_ ? &*rope_ : nullptr;
  torch::Tensor q = detail::apply_rope(rope, detail::project_heads(q_proj, x, H), 0);  // [B,H,T,hd]
  torch::Tensor k = detail::apply_rope(rope, detail::project_heads(k_proj, x, H), 0);
  torch::Tensor v = detail::project_heads(v_proj, x, H);
  torch::Tensor bucket = hash(q);  // [R, B, H, T]

  DotProductAttentionOptions base;
  base.scale(1.0 / (std::sqrt(head_dim) * o.temperature()))
      .dropout(is_training() ? o.dropout() : 0.0)
      .need_weights(need_weights);
  detail::merge_attn_mask(kName, attn_mask, B, H, T, base);
  const torch::Tensor user_mask = base.mask();
  torch::Tensor out, weights, count;
  for (int64_t r = 0; r < o.num_hashes(); ++r) {
    // Same bucket in this round: [B, H, T, T]
    torch::Tensor same = bucket[r].unsqueeze(-1) == bucket[r].unsqueeze(-2);
    DotProductAttentionOptions attn = base;
    attn.mask(user_mask.defined() ? same & user_mask : same);
    AttentionResult res = functional::dot_product_attention(q, k, v, attn);
    // A row whose keys the user mask hid in this round (lse = -inf, output 0) does not count.
    torch::Tensor seen = torch::isfinite(res.lse).to(q.scalar_type()).unsqueeze(-1);  // [B,H,T,1]
    out = r == 0 ? res.output : out + res.output;
    count = r == 0 ? seen : count + seen;
    if (need_weights) weights = r == 0 ? res.weights : weights + res.weights;
  }
  torch::Tensor denom = count.clamp_min(1.0);
  out = out / denom;
  if (need_weights) weights = weights / denom;
  return AttentionOutput{o_proj(detail::merge_heads(out)), weights};
}

torch::Tensor LSHAttentionImpl::forward(const torch::Tensor& x) { return run(x, {}, false).output; }

torch::Tensor LSHAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, false).output;
}

AttentionOutput LSHAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                   const torch::Tensor& attn_mask) {
  return run(x, attn_mask, true);
}


}  // namespace attnkit
