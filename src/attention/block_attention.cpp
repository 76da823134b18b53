#include <attnkit/attention/block_attention.h>

#include <attnkit/functional/dot_product_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace attnkit {

namespace {
constexpr const char* kName = "BlockAttention";
}

BlockAttentionOptions::BlockAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

BlockAttentionImpl::BlockAttentionImpl(BlockAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.block_size() > 0, kName, ": block_size must be positive, got ", o.block_size());
  TORCH_CHECK(!o.overlap() || o.block_size() >= 2, kName,
              ": overlap(true) needs block_size >= 2 (blocks advance by block_size / 2), got ",
              o.block_size());
  detail::check_temperature_and_dropout(kName, o.temperature(), o.dropout());
  reset();
}

BlockAttentionImpl::BlockAttentionImpl(int64_t dim, int64_t num_heads)
    : BlockAttentionImpl(BlockAttentionOptions(dim, num_heads)) {}

void BlockAttentionImpl::reset() {
  detail::register_zoo_layers(*this, options.dim(), options.bias(), q_proj, k_proj, v_proj, o_proj);
  // Validates rope.dim against head_dim once, at construction.
  if (options.rope()) rope_.emplace(*options.rope(), options.dim() / options.num_heads(), kName);
}

void BlockAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void BlockAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::BlockAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", block_size=" << o.block_size() << ", overlap=" << detail::str(o.overlap())
         << ", temperature=" << o.temperature() << ", dropout=" << o.dropout()
         << ", bias=" << detail::str(o.bias()) << ", rope=";
  detail::print_rope(stream, o.rope());
  stream << ")";
}

torch::Tensor BlockAttentionImpl::block_starts(int64_t seq_len) const {
  TORCH_CHECK(seq_len > 0, kName, ": seq_len must be positive, got ", seq_len);
  const int64_t bs = options.block_size();
  const int64_t stride = options.overlap() ? bs / 2 : bs;
  std::vector<int64_t> starts{0};
  // Add blocks while the last one ends before the sequence does.
  while (starts.back() + bs < seq_len) starts.push_back(starts.back() + stride);
  return torch::tensor(starts, torch::kLong);
}

torch::Tensor BlockAttentionImpl::keep_masks(int64_t seq_len) const {
  const int64_t bs = options.block_size();
  const int64_t stride = options.overlap() ? bs / 2 : bs;
  const int64_t phases = (bs + stride - 1) / stride;  // blocks c and c + phases never overlap
  torch::Tensor starts = block_starts(seq_len);
  auto s = starts.accessor<int64_t, 1>();
  torch::Tensor masks = torch::zeros({phases, seq_len, seq_len}, torch::kBool);
  for (int64_t c = 0; c < starts.size(0); ++c) {
    const int64_t begin = s[c], len = std::min(bs, seq_len - begin);
    masks[c % phases].narrow(0, begin, len).narrow(1, begin, len).fill_(true);
  }
  return masks;
}

AttentionOutput BlockAttentionImpl::run(const torch::Tensor& x,
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

  DotProductAttentionOptions base;
  base.scale(1.0 / (std::sqrt(head_dim) * o.temperature()))
      .dropout(is_training() ? o.dropout() : 0.0)
      .need_weights(need_weights);
  detail::merge_attn_mask(kName, attn_mask, B, H, T, base);
  const torch::Tensor user_mask = base.mask();

  torch::Tensor masks = keep_masks(T).to(x.device());  // [P, T, T]
  const int64_t phases = std::min<int64_t>(masks.size(0), block_starts(T).size(0));
  torch::Tensor out, weights, count;
  for (int64_t p = 0; p < phases; ++p) {
    DotProductAttentionOptions attn = base;
    attn.mask(user_mask.defined() ? masks[p] & user_mask : masks[p]);
    AttentionResult r = functional::dot_product_attention(q, k, v, attn);
    // A row that saw no key in this phase (no block of the phase covers it, or the user mask
    // hid every key) has lse = -inf and output 0: it does not count toward the mean.
    torch::Tensor seen = torch::isfinite(r.lse).to(q.scalar_type()).unsqueeze(-1);  // [B,H,T,1]
    out = p == 0 ? r.output : out + r.output;
    count = p == 0 ? seen : count + seen;
    if (need_weights) weights = p == 0 ? r.weights : weights + r.weights;
  }
  torch::Tensor denom = count.clamp_min(1.0);
  out = out / denom;
  if (need_weights) weights = weights / denom;
  return AttentionOutput{o_proj(detail::merge_heads(out)), weights};
}

torch::Tensor BlockAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, false).output;
}

torch::Tensor BlockAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, false).output;
}

AttentionOutput BlockAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                     const torch::Tensor& attn_mask) {
  return run(x, attn_mask, true);
}

}  // namespace attnkit
