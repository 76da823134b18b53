#include <attnkit/attention/big_bird_attention.h>

#include <attnkit/functional/dot_product_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <vector>

namespace attnkit {

namespace {
constexpr const char* kName = "BigBirdAttention";
}

BigBirdAttentionOptions::BigBirdAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

BigBirdAttentionImpl::BigBirdAttentionImpl(BigBirdAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  detail::check_heads(kName, o.dim(), o.num_heads());
  TORCH_CHECK(o.block_size() > 0, kName, ": block_size must be positive, got ", o.block_size());
  TORCH_CHECK(o.num_window_blocks() > 0 && o.num_window_blocks() % 2 == 1, kName,
              ": num_window_blocks must be a positive odd number, got ", o.num_window_blocks());
  TORCH_CHECK(o.num_random_blocks() >= 0, kName, ": num_random_blocks must be >= 0, got ",
              o.num_random_blocks());
  TORCH_CHECK(o.num_global_blocks() >= 0, kName, ": num_global_blocks must be >= 0, got ",
              o.num_global_blocks());
  reset();
}

BigBirdAttentionImpl::BigBirdAttentionImpl(int64_t dim, int64_t num_heads)
    : BigBirdAttentionImpl(BigBirdAttentionOptions(dim, num_heads)) {}

void BigBirdAttentionImpl::reset() {
  const int64_t D = options.dim();
  detail::register_zoo_layers(*this, D, options.bias(), q_proj, k_proj, v_proj, o_proj);
}

void BigBirdAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void BigBirdAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::BigBirdAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", block_size=" << o.block_size() << ", num_window_blocks=" << o.num_window_blocks()
         << ", num_random_blocks=" << o.num_random_blocks()
         << ", num_global_blocks=" << o.num_global_blocks()
         << ", causal=" << detail::str(o.causal()) << ", seed=" << o.seed()
         << ", bias=" << detail::str(o.bias()) << ")";
}

torch::Tensor BigBirdAttentionImpl::block_mask(int64_t num_blocks) const {
  TORCH_CHECK(num_blocks > 0, kName, ": block_mask num_blocks must be positive, got ", num_blocks);
  const int64_t nb = num_blocks, half = options.num_window_blocks() / 2;
  const int64_t globals = std::min(options.num_global_blocks(), nb);
  const bool causal = options.causal();
  torch::Tensor mask = torch::zeros({nb, nb}, torch::kBool);
  auto m = mask.accessor<bool, 2>();
  for (int64_t g = 0; g < globals; ++g) {
    for (int64_t j = 0; j < nb; ++j) m[g][j] = m[j][g] = true;
  }
  const int64_t hi = causal ? 0 : half;
  for (int64_t j = 0; j < nb; ++j) {
    for (int64_t k = std::max<int64_t>(j - half, 0); k <= std::min(j + hi, nb - 1); ++k) {
      m[j][k] = true;
    }
  }
  // One generator per call, seeded the same way: the pattern is a function of nb alone, and a
  // causal row j of it does not depend on nb (its candidates are all < j).
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(options.seed()));
  std::vector<int64_t> candidates;
  for (int64_t j = globals; j < nb; ++j) {
    candidates.clear();
    for (int64_t k = globals; k < nb; ++k) {
      const bool in_window = k >= j - half && k <= j + half;
      if (!in_window && (!causal || k < j - half)) candidates.push_back(k);
    }
    if (candidates.empty()) continue;
    torch::Tensor pick =
        torch::randperm(static_cast<int64_t>(candidates.size()), gen, torch::kLong);
    const int64_t count = std::min<int64_t>(options.num_random_blocks(), pick.size(0));
    auto p = pick.accessor<int64_t, 1>();
    for (int64_t i = 0; i < count; ++i) m[j][candidates[p[i]]] = true;
  }
  return mask;
}

AttentionOutput BigBirdAttentionImpl::run(const torch::Tensor& x,
                                          const torch::Tensor& attn_mask,
                                          const torch::Tensor& key_padding_mask,
                                          DecodeState* state,
                                          bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  const int64_t B = x.size(0), T = x.size(1), H = options.num_heads(), hd = options.dim() / H;
  const int64_t bs = options.block_size();
  const int64_t offset = state ? state->length() : 0;
  const int64_t L = offset + T;
  if (key_padding_mask.defined()) {
    TORCH_CHECK(key_padding_mask.scalar_type() == torch::kBool, kName,
                ": expected key_padding_mask of dtype bool (true = real token), got ",
                key_padding_mask.scalar_type());
    TORCH_CHECK(key_padding_mask.dim() == 2 && key_padding_mask.size(0) == B &&
                    key_padding_mask.size(1) == T,
                kName, ": expected key_padding_mask of shape [B, T] = [", B, ", ", T, "], got ",
                key_padding_mask.sizes());
  }

  torch::Tensor q = q_proj(x).view({B, T, H, hd}).transpose(1, 2);  // [B, H, T, hd]
  torch::Tensor k = k_proj(x).view({B, T, H, hd}).transpose(1, 2);
  torch::Tensor v = v_proj(x).view({B, T, H, hd}).transpose(1, 2);
  if (state) {
    k = state->append("k", k, 2);  // [B, H, L, hd]
    v = state->append("v", v, 2);
    state->advance(T);
  }

  // Token keep [T, L]: the rows of this chunk's query blocks, the columns of every key block.
  auto i64 = torch::TensorOptions().dtype(torch::kLong).device(x.device());
  torch::Tensor blocks = block_mask((L + bs - 1) / bs).to(x.device());
  torch::Tensor query_block = torch::arange(offset, L, i64).div(bs, "floor");
  torch::Tensor key_block = torch::arange(L, i64).div(bs, "floor");
  torch::Tensor keep = blocks.index_select(0, query_block).index_select(1, key_block);

  DotProductAttentionOptions attn;
  attn.causal(options.causal()).need_weights(need_weights);
  detail::add_attn_mask(kName, attn_mask, B, H, T, attn);
  if (key_padding_mask.defined()) keep = keep & key_padding_mask.view({B, 1, 1, T});
  attn.mask(attn.mask().defined() ? attn.mask() & keep : keep);
  AttentionResult r = functional::dot_product_attention(q, k, v, attn);

  torch::Tensor out = r.output.transpose(1, 2).reshape({B, T, options.dim()});
  return AttentionOutput{o_proj(out), r.weights};
}

torch::Tensor BigBirdAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, {}, nullptr, false).output;
}

torch::Tensor BigBirdAttentionImpl::forward(const torch::Tensor& x,
                                            const torch::Tensor& attn_mask) {
  return run(x, attn_mask, {}, nullptr, false).output;
}

torch::Tensor BigBirdAttentionImpl::forward_padded(const torch::Tensor& x,
                                                   const torch::Tensor& key_padding_mask) {
  TORCH_CHECK(key_padding_mask.defined(), kName, ": key_padding_mask is undefined");
  return run(x, {}, key_padding_mask, nullptr, false).output;
}

torch::Tensor BigBirdAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, {}, &state, false).output;
}

DecodeState BigBirdAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput BigBirdAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                       const torch::Tensor& attn_mask) {
  return run(x, attn_mask, {}, nullptr, true);
}

}  // namespace attnkit
