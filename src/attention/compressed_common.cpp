#include "attention/compressed_common.h"

#include <attnkit/attention/heavily_compressed_attention.h>
#include <attnkit/core/rms_norm.h>
#include <attnkit/functional/dot_product_attention.h>
#include <attnkit/functional/gather_attention.h>

#include "attention/dense_common.h"

#include <torch/nn/init.h>

#include <cmath>
#include <limits>

namespace attnkit {

// --- GroupedOutputProjection

GroupedOutputProjectionOptions::GroupedOutputProjectionOptions(int64_t num_heads,
                                                               int64_t head_dim,
                                                               int64_t num_groups,
                                                               int64_t dim)
    : num_heads_(num_heads), head_dim_(head_dim), num_groups_(num_groups), dim_(dim) {}

GroupedOutputProjectionImpl::GroupedOutputProjectionImpl(GroupedOutputProjectionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  constexpr const char* kName = "GroupedOutputProjection";
  TORCH_CHECK(o.num_heads() > 0, kName, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.head_dim() > 0, kName, ": head_dim must be positive, got ", o.head_dim());
  TORCH_CHECK(o.num_groups() > 0 && o.num_heads() % o.num_groups() == 0, kName, ": num_groups (",
              o.num_groups(), ") must be positive and divide num_heads (", o.num_heads(), ")");
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.group_dim() >= 0, kName, ": group_dim must be >= 0 (0 = head_dim), got ",
              o.group_dim());
  if (o.group_dim() == 0) options.group_dim(o.head_dim());
  reset();
}

void GroupedOutputProjectionImpl::reset() {
  const auto& o = options;
  const int64_t in_group = (o.num_heads() / o.num_groups()) * o.head_dim();
  w = register_parameter("w", torch::empty({o.num_groups(), in_group, o.group_dim()}));
  out = register_module(
      "out", torch::nn::Linear(
                 torch::nn::LinearOptions(o.num_groups() * o.group_dim(), o.dim()).bias(o.bias())));
  reset_parameters();
}

void GroupedOutputProjectionImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(w);
  out->reset_parameters();
}

void GroupedOutputProjectionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::GroupedOutputProjection(num_heads=" << o.num_heads()
         << ", head_dim=" << o.head_dim() << ", num_groups=" << o.num_groups()
         << ", dim=" << o.dim() << ", group_dim=" << o.group_dim()
         << ", bias=" << (o.bias() ? "true" : "false") << ")";
}

torch::Tensor GroupedOutputProjectionImpl::forward(const torch::Tensor& o) {
  const auto& opt = options;
  TORCH_CHECK(o.dim() == 4 && o.size(2) == opt.num_heads() && o.size(3) == opt.head_dim(),
              "GroupedOutputProjection: expected input [B, T, num_heads = ", opt.num_heads(),
              ", head_dim = ", opt.head_dim(), "], got ", o.sizes());
  const int64_t B = o.size(0), T = o.size(1), G = opt.num_groups();
  // [B, T, G, (H/G) hd] x w[g] [(H/G) hd, group_dim] -> [B, T, G, group_dim]
  torch::Tensor grouped = torch::einsum("btgi,gio->btgo", {o.reshape({B, T, G, -1}), w});
  return out(grouped.reshape({B, T, G * opt.group_dim()}));
}

namespace detail {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

torch::ScalarType opmath(const torch::Tensor& t) {
  return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// Sign vector s [c] such that R(-p) x = s * R(p) (s * x) for the rotary layout of `rope`: the
// second member of each rotated pair is negated (complex conjugation of the rotated channels).
torch::Tensor conjugation_signs(const RotaryEmbedding& rope, const torch::TensorOptions& options) {
  const int64_t c = rope.head_dim(), d = rope.rope_dim();
  const int64_t start = rope.options().channels() == RopeChannels::kFirst ? 0 : c - d;
  torch::Tensor signs = torch::ones({c}, options);
  if (rope.options().style() == RopeStyle::kHalf) {
    signs.narrow(0, start + d / 2, d / 2).fill_(-1.0);
  } else {
    signs.narrow(0, start, d).slice(0, 1, d, 2).fill_(-1.0);
  }
  return signs;
}

// out [B, T, H, c] of keys that carry their rotation (keys = values): rotate by -p, leaving the
// relative positions. Identity without RoPE.
torch::Tensor unrotate_output(const CompressedSpec& spec,
                              const torch::Tensor& out,
                              int64_t offset) {
  if (!spec.rope) return out;
  torch::Tensor signs = conjugation_signs(*spec.rope, out.options());
  return signs * spec.rope->apply(signs * out, offset);
}

}  // namespace

void check_compressed_options(const std::string& mechanism,
                              int64_t dim,
                              int64_t num_heads,
                              int64_t compression_rate,
                              int64_t kv_dim,
                              int64_t q_lora_rank,
                              int64_t num_groups,
                              int64_t window,
                              double norm_eps) {
  TORCH_CHECK(dim > 0, mechanism, ": dim must be positive, got ", dim);
  TORCH_CHECK(num_heads > 0, mechanism, ": num_heads must be positive, got ", num_heads);
  TORCH_CHECK(compression_rate > 0, mechanism, ": compression_rate must be positive, got ",
              compression_rate);
  TORCH_CHECK(kv_dim >= 0, mechanism, ": kv_dim must be >= 0 (0 = dim / num_heads), got ", kv_dim);
  if (kv_dim == 0) {
    TORCH_CHECK(dim % num_heads == 0, mechanism, ": dim (", dim,
                ") must be divisible by num_heads (", num_heads, ") when kv_dim is 0");
  }
  TORCH_CHECK(q_lora_rank >= 0, mechanism, ": q_lora_rank must be >= 0 (0 = dim / 2), got ",
              q_lora_rank);
  TORCH_CHECK(q_lora_rank > 0 || dim >= 2, mechanism, ": dim (", dim,
              ") must be >= 2 to derive q_lora_rank = dim / 2; set q_lora_rank");
  TORCH_CHECK(num_groups >= 0, mechanism, ": num_groups must be >= 0 (0 = num_heads), got ",
              num_groups);
  if (num_groups > 0) {
    TORCH_CHECK(num_heads % num_groups == 0, mechanism, ": num_heads (", num_heads,
                ") must be divisible by num_groups (", num_groups, ")");
  }
  TORCH_CHECK(window >= 0, mechanism, ": window must be >= 0, got ", window);
  TORCH_CHECK(norm_eps >= 0, mechanism, ": norm_eps must be >= 0, got ", norm_eps);
}

torch::Tensor gated_pool(const torch::Tensor& values, const torch::Tensor& gates) {
  // s <- softmax over the pooled positions, per channel, in opmath; comp <- sum s * values
  torch::Tensor s = torch::softmax(gates.to(opmath(gates)), /*dim=*/2).to(values.scalar_type());
  return (s * values).sum(2);
}

torch::Tensor compress_blocks(const torch::Tensor& rows,
                              const torch::Tensor& pos_bias,
                              int64_t rate) {
  const int64_t B = rows.size(0), m = rows.size(1) / rate, c = rows.size(2) / 2;
  torch::Tensor values = rows.narrow(2, 0, c).reshape({B, m, rate, c});
  torch::Tensor gates = rows.narrow(2, c, c).reshape({B, m, rate, c}) + pos_bias;
  return gated_pool(values, gates);
}

torch::Tensor compress_blocks_overlapped(const torch::Tensor& rows,
                                         const torch::Tensor& bias_a,
                                         const torch::Tensor& bias_b,
                                         const torch::Tensor& prev,
                                         int64_t rate) {
  const int64_t B = rows.size(0), m = rows.size(1) / rate, c = rows.size(2) / 4;
  if (m == 0) return torch::zeros({B, 0, c}, rows.options());
  auto block = [&](const torch::Tensor& t, int64_t column) {
    return t.narrow(2, column * c, c).reshape({B, t.size(1) / rate, rate, c});
  };
  // own block: (kv_a, z_a + bias_a) [B, m, r, c]
  torch::Tensor own_values = block(rows, 0);
  torch::Tensor own_gates = block(rows, 1) + bias_a;
  // previous block of entry e: block e - 1 of this call, or `prev` for the first entry
  torch::Tensor prev_values, prev_gates;
  if (prev.defined()) {
    prev_values = block(prev, 0);
    prev_gates = block(prev, 1) + bias_b;
  } else {
    prev_values = torch::zeros({B, 1, rate, c}, rows.options());
    prev_gates = torch::full({B, 1, rate, c}, kNegInf, rows.options());
  }
  torch::Tensor before_values = block(rows, 2).narrow(1, 0, m - 1);
  torch::Tensor before_gates = block(rows, 3).narrow(1, 0, m - 1) + bias_b;
  torch::Tensor values = torch::cat({own_values, torch::cat({prev_values, before_values}, 1)}, 2);
  torch::Tensor gates = torch::cat({own_gates, torch::cat({prev_gates, before_gates}, 1)}, 2);
  return gated_pool(values, gates);  // softmax over the 2r positions
}

NewBlocks take_blocks(DecodeState* state,
                      const torch::Tensor& rows,
                      const torch::Tensor& pad_row,
                      int64_t rate) {
  NewBlocks blocks;
  if (!state) {
    const int64_t T = rows.size(1), padded = (T + rate - 1) / rate * rate;
    blocks.rows = rows;
    if (padded > T) {
      torch::Tensor pad =
          pad_row.to(rows.options()).expand({rows.size(0), padded - T, rows.size(2)});
      blocks.rows = torch::cat({rows, pad}, 1);
    }
    blocks.count = padded / rate;
    return blocks;
  }
  const int64_t L = state->length();
  torch::Tensor all =
      state->contains("pending") ? torch::cat({state->get("pending"), rows}, 1) : rows;
  TORCH_INTERNAL_ASSERT(all.size(1) == L % rate + rows.size(1), "pending rows out of step");
  blocks.count = all.size(1) / rate;
  blocks.first_entry = L / rate;
  blocks.rows = all.narrow(1, 0, blocks.count * rate);
  state->set(
      "pending",
      all.narrow(1, blocks.count * rate, all.size(1) - blocks.count * rate).detach().clone());
  return blocks;
}

torch::Tensor cache_rows(DecodeState* state, const std::string& name, const torch::Tensor& fresh) {
  if (!state) return fresh;
  torch::Tensor all =
      state->contains(name) ? torch::cat({state->get(name), fresh.detach()}, 1) : fresh.detach();
  state->set(name, all);
  return all;
}

torch::Tensor finish_entries(const CompressedSpec& spec,
                             const torch::Tensor& pooled,
                             const torch::Tensor& kv_norm,
                             int64_t first_entry) {
  torch::Tensor entries = rms_norm(pooled, kv_norm, spec.norm_eps);
  if (!spec.rope || entries.size(1) == 0) return entries;
  // Entry e sits at position e r, so the positions step by r: rotate each entry repeated r times
  // at consecutive positions from first_entry * r and keep every r-th row.
  torch::Tensor spread = entries.repeat_interleave(spec.rate, /*dim=*/1);
  return spec.rope->apply(spread, first_entry * spec.rate).slice(1, 0, spread.size(1), spec.rate);
}

torch::Tensor finish_raw(const CompressedSpec& spec,
                         const torch::Tensor& raw,
                         const torch::Tensor& kv_norm,
                         int64_t offset) {
  torch::Tensor kv = rms_norm(raw, kv_norm, spec.norm_eps);
  return spec.rope ? spec.rope->apply(kv, offset) : kv;
}

torch::Tensor finish_queries(const CompressedSpec& spec,
                             const torch::Tensor& q,
                             const torch::Tensor& q_norm,
                             int64_t offset) {
  torch::Tensor normed = rms_norm(q, q_norm, spec.norm_eps);
  return spec.rope ? spec.rope->apply(normed, offset) : normed;
}

RawWindow raw_window(const CompressedSpec& spec,
                     DecodeState* state,
                     const torch::Tensor& raw,
                     int64_t offset) {
  const int64_t T = raw.size(1), W = spec.window;
  auto i64 = torch::TensorOptions().dtype(torch::kLong).device(raw.device());
  torch::Tensor chunk_positions = torch::arange(offset, offset + T, i64);
  if (!state || W == 0) return RawWindow{raw, chunk_positions};

  // The ring holds min(W, L) rows; slot i holds the latest position p < L with p % W == i.
  const int64_t L = offset;
  torch::Tensor ring = state->contains("window_kv")
                           ? state->get("window_kv")
                           : torch::zeros({raw.size(0), 0, raw.size(2)}, raw.options());
  const int64_t S = ring.size(1);
  torch::Tensor slots = torch::arange(S, i64);
  torch::Tensor ring_positions = (L - 1) - torch::remainder((L - 1) - slots, W);
  RawWindow window{torch::cat({ring, raw}, 1), torch::cat({ring_positions, chunk_positions})};

  // Grow the ring up to W rows (positions < W live in slot = position), then overwrite the
  // slots of the last min(T, W) chunk positions.
  const int64_t grown = std::min(W, L + T);
  if (grown > S) {
    ring =
        torch::cat({ring, torch::zeros({raw.size(0), grown - S, raw.size(2)}, raw.options())}, 1);
  }
  const int64_t n = std::min(T, W);
  torch::Tensor written = torch::remainder(torch::arange(L + T - n, L + T, i64), W);
  state->set("window_kv", ring.index_copy(1, written, raw.narrow(1, T - n, n).detach()));
  return window;
}

torch::Tensor entry_visibility(
    int64_t offset, int64_t seq_len, int64_t num_entries, int64_t rate, torch::Device device) {
  auto i64 = torch::TensorOptions().dtype(torch::kLong).device(device);
  torch::Tensor p = torch::arange(offset, offset + seq_len, i64).unsqueeze(1);
  torch::Tensor e = torch::arange(num_entries, i64).unsqueeze(0);
  return (e + 1) * rate <= p;  // the entry's block lies strictly before the query
}

torch::Tensor keep_from_attn_mask(const std::string& mechanism,
                                  const torch::Tensor& attn_mask,
                                  int64_t batch_size,
                                  int64_t seq_len) {
  if (!attn_mask.defined()) return {};
  DotProductAttentionOptions parsed;
  // num_heads = 1: the keys are one shared KV head, so per-head masks are refused.
  add_attn_mask(mechanism, attn_mask, batch_size, /*num_heads=*/1, seq_len, parsed);
  TORCH_CHECK(!parsed.bias().defined(), mechanism,
              ": expected a bool attn_mask (true = attend), got ", attn_mask.scalar_type(),
              " (an additive mask has no meaning for the pooled entries)");
  return parsed.mask().squeeze(1);  // [B or 1, T, T]
}

torch::Tensor entry_keep_from_mask(const torch::Tensor& keep,
                                   int64_t num_entries,
                                   int64_t rate,
                                   bool overlapped) {
  const int64_t Bm = keep.size(0), T = keep.size(1), padded = num_entries * rate;
  // Tokens past T only pad the trailing partial block, which is never visible anyway.
  torch::Tensor full = padded > T ? torch::constant_pad_nd(keep, {0, padded - T}, 1) : keep;
  torch::Tensor block = full.narrow(2, 0, padded).reshape({Bm, T, num_entries, rate}).all(-1);
  if (!overlapped || num_entries == 0) return block;
  // entry e also pools block e - 1 (entry 0 has no previous block)
  torch::Tensor previous = torch::constant_pad_nd(block.narrow(2, 0, num_entries - 1), {1, 0}, 1);
  return block & previous;
}

AttentionResult shared_kv_attention(const CompressedSpec& spec,
                                    const torch::Tensor& q,
                                    const torch::Tensor& entries,
                                    const torch::Tensor& entry_keep,
                                    const RawWindow& window,
                                    const torch::Tensor& raw_mask,
                                    const torch::Tensor& sink,
                                    int64_t offset,
                                    bool need_weights) {
  const int64_t B = q.size(0), T = q.size(1), c = q.size(3);
  const int64_t nb = entries.size(1);
  // raw key s is visible to query p iff p - window < s <= p (and the mask keeps it)
  torch::Tensor p = torch::arange(offset, offset + T, window.positions.options()).unsqueeze(1);
  torch::Tensor s = window.positions.unsqueeze(0);
  torch::Tensor raw_keep = ((s <= p) & (s > p - spec.window)).unsqueeze(0);  // [1, T, S + T]
  if (raw_mask.defined()) raw_keep = raw_keep & raw_mask;
  torch::Tensor keep =
      torch::cat({entry_keep.expand({B, T, nb}), raw_keep.expand({B, T, raw_keep.size(2)})}, -1);
  torch::Tensor kv = torch::cat({entries, window.kv}, 1).unsqueeze(1);  // [B, 1, Tk, c]

  DotProductAttentionOptions o;
  o.scale(1.0 / std::sqrt(static_cast<double>(c)))
      .sinks(sink)
      .mask(keep.unsqueeze(1))
      .need_weights(need_weights);
  AttentionResult r = functional::dot_product_attention(q.transpose(1, 2), kv, kv, o);
  r.output = unrotate_output(spec, r.output.transpose(1, 2), offset);  // [B, T, H, c]
  return r;
}

torch::Tensor shared_kv_gather_attention(const CompressedSpec& spec,
                                         const torch::Tensor& q,
                                         const torch::Tensor& entries,
                                         const torch::Tensor& entry_indices,
                                         const RawWindow& window,
                                         const torch::Tensor& raw_mask,
                                         const torch::Tensor& sink,
                                         int64_t offset) {
  const int64_t B = q.size(0), T = q.size(1), c = q.size(3), nb = entries.size(1);
  const int64_t S = window.kv.size(1) - T;  // ring rows before the chunk
  // Query p sees positions p - d, d < min(window, offset + T) (those >= 0). Position s lives in
  // column S + s - offset of the window when it is in the chunk, else in ring slot s % window.
  const int64_t span = std::min(spec.window, offset + T);
  auto i64 = entry_indices.options();
  torch::Tensor p = torch::arange(offset, offset + T, i64).unsqueeze(1);
  torch::Tensor pos = p - torch::arange(span, i64).unsqueeze(0);  // [T, span]
  torch::Tensor column = torch::where(pos >= offset, pos - offset + S,
                                      torch::remainder(pos, std::max<int64_t>(spec.window, 1)));
  torch::Tensor before_start = pos < 0;
  column = column.masked_fill(before_start, 0);  // any valid column: the slot is dropped below
  torch::Tensor usable = before_start.logical_not().unsqueeze(0);  // [1, T, span]
  if (raw_mask.defined()) {
    usable = usable & raw_mask.gather(2, column.unsqueeze(0).expand({raw_mask.size(0), T, span}));
  }
  torch::Tensor raw_indices = (column + nb).unsqueeze(0).masked_fill(usable.logical_not(), -1);
  // one key list per query for the single shared KV head: [B, 1, T, k + span]
  torch::Tensor indices =
      torch::cat({entry_indices, raw_indices.expand({B, T, span})}, -1).unsqueeze(1);
  torch::Tensor kv = torch::cat({entries, window.kv}, 1).unsqueeze(1);  // [B, 1, nb + S + T, c]
  functional::GatherAttentionOptions o;
  o.scale(1.0 / std::sqrt(static_cast<double>(c))).sinks(sink);
  torch::Tensor out =
      functional::gather_attention(q.transpose(1, 2), kv, kv, indices, {}, o).output;
  return unrotate_output(spec, out.transpose(1, 2), offset);  // [B, T, H, c]
}

}  // namespace detail
}  // namespace attnkit
