#include <attnkit/attention/heavily_compressed_attention.h>

#include "attention/compressed_common.h"
#include "attention/dense_common.h"

#include <limits>

namespace attnkit {

namespace {
constexpr const char* kName = "HeavilyCompressedAttention";
}

HeavilyCompressedAttentionOptions::HeavilyCompressedAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

HeavilyCompressedAttentionImpl::HeavilyCompressedAttentionImpl(
    HeavilyCompressedAttentionOptions options_)
    : options(std::move(options_)) {
  auto& o = options;
  detail::check_compressed_options(kName, o.dim(), o.num_heads(), o.compression_rate(), o.kv_dim(),
                                   o.q_lora_rank(), o.num_groups(), o.window(), o.norm_eps());
  if (o.kv_dim() == 0) o.kv_dim(o.dim() / o.num_heads());
  if (o.q_lora_rank() == 0) o.q_lora_rank(o.dim() / 2);
  if (o.num_groups() == 0) o.num_groups(o.num_heads());
  reset();
}

HeavilyCompressedAttentionImpl::HeavilyCompressedAttentionImpl(int64_t dim, int64_t num_heads)
    : HeavilyCompressedAttentionImpl(HeavilyCompressedAttentionOptions(dim, num_heads)) {}

void HeavilyCompressedAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim(), H = o.num_heads(), c = o.kv_dim(), r = o.compression_rate();
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(o.bias()));
  };
  kv = register_module("kv", linear(D, c));
  z = register_module("z", linear(D, c));
  pos_bias = register_parameter("pos_bias", torch::zeros({r, c}));
  q_down = register_module("q_down", linear(D, o.q_lora_rank()));
  q_up = register_module("q_up", linear(o.q_lora_rank(), H * c));
  q_norm = register_parameter("q_norm", torch::ones({c}));
  kv_norm = register_parameter("kv_norm", torch::ones({c}));
  sink = register_parameter("sink", torch::zeros({H}));
  proj = register_module(
      "proj", GroupedOutputProjection(
                  GroupedOutputProjectionOptions(H, c, o.num_groups(), D).bias(o.bias())));
  // Validates rope.dim against kv_dim once, at construction.
  rope_.reset();
  if (o.rope()) rope_.emplace(*o.rope(), c, kName);
}

void HeavilyCompressedAttentionImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  detail::reset_linears({kv, z, q_down, q_up});
  proj->reset_parameters();
  pos_bias.zero_();
  q_norm.fill_(1.0);
  kv_norm.fill_(1.0);
  sink.zero_();
}

void HeavilyCompressedAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::HeavilyCompressedAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", compression_rate=" << o.compression_rate() << ", kv_dim=" << o.kv_dim()
         << ", q_lora_rank=" << o.q_lora_rank() << ", num_groups=" << o.num_groups()
         << ", window=" << o.window() << ", bias=" << detail::str(o.bias())
         << ", norm_eps=" << o.norm_eps() << ", rope=";
  if (o.rope()) {
    stream << *o.rope();
  } else {
    stream << "none";
  }
  stream << ")";
}

AttentionOutput HeavilyCompressedAttentionImpl::run(const torch::Tensor& x,
                                                    const torch::Tensor& attn_mask,
                                                    DecodeState* state,
                                                    bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), kv->weight);
  if (state) check_state(*state, x);
  const auto& o = options;
  const int64_t B = x.size(0), T = x.size(1), H = o.num_heads(), c = o.kv_dim();
  const int64_t r = o.compression_rate();
  const int64_t offset = state ? state->length() : 0;
  const detail::CompressedSpec spec{
      kName, H, c, r, o.window(), o.norm_eps(), rope_ ? &*rope_ : nullptr};
  const torch::Tensor keep = detail::keep_from_attn_mask(kName, attn_mask, B, T);  // [B', T, T]

  // compressor rows [kv | z]: [B, T, 2c]; padding gives values 0 and gates -inf
  torch::Tensor raw = kv(x);
  torch::Tensor rows = torch::cat({raw, z(x)}, -1);
  torch::Tensor pad_row =
      torch::cat({torch::zeros({c}, rows.options()),
                  torch::full({c}, -std::numeric_limits<double>::infinity(), rows.options())});
  detail::NewBlocks blocks = detail::take_blocks(state, rows, pad_row, r);
  torch::Tensor fresh = detail::finish_entries(
      spec, detail::compress_blocks(blocks.rows, pos_bias, r), kv_norm, blocks.first_entry);
  torch::Tensor entries = detail::cache_rows(state, "entries", fresh);  // [B, nb, c]

  torch::Tensor q =
      detail::finish_queries(spec, q_up(q_down(x)).view({B, T, H, c}), q_norm, offset);
  detail::RawWindow window =
      detail::raw_window(spec, state, detail::finish_raw(spec, raw, kv_norm, offset), offset);
  torch::Tensor entry_keep =
      detail::entry_visibility(offset, T, entries.size(1), r, x.device()).unsqueeze(0);
  if (keep.defined()) {
    entry_keep =
        entry_keep & detail::entry_keep_from_mask(keep, entries.size(1), r, /*overlapped=*/false);
  }
  AttentionResult result = detail::shared_kv_attention(spec, q, entries, entry_keep, window, keep,
                                                       sink, offset, need_weights);
  if (state) state->advance(T);
  return AttentionOutput{proj(result.output), result.weights};
}

torch::Tensor HeavilyCompressedAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor HeavilyCompressedAttentionImpl::forward(const torch::Tensor& x,
                                                      const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor HeavilyCompressedAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState HeavilyCompressedAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput HeavilyCompressedAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                                 const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
