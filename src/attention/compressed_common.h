#pragma once
// The pieces HeavilyCompressedAttention and CompressedSparseAttention (DeepSeek-V4) share: the
// gated pooling compressors, the bookkeeping of compressed entries, the partial block and the
// raw-window ring in a DecodeState, and the shared-KV attention core with its sink. Private to
// the library.

#include <attnkit/attention/attention.h>
#include <attnkit/core/reference_attention.h>
#include <attnkit/core/rope.h>

#include <string>

namespace attnkit {
namespace detail {

/// What the shared core needs to know about one compressed module.
struct CompressedSpec {
  std::string mechanism;
  int64_t num_heads = 0;
  int64_t kv_dim = 0;  // c
  int64_t rate = 0;    // r
  int64_t window = 0;
  double norm_eps = 1e-6;
  const RotaryEmbedding* rope = nullptr;  // null: no RoPE
};

/// Validates the options both mechanisms share; messages name `mechanism`.
void check_compressed_options(const std::string& mechanism,
                              int64_t dim,
                              int64_t num_heads,
                              int64_t compression_rate,
                              int64_t kv_dim,
                              int64_t q_lora_rank,
                              int64_t num_groups,
                              int64_t window,
                              double norm_eps);

/// Per-channel softmax pooling: values, gates [B, nb, P, c] -> sum_P softmax_P(gates) * values,
/// [B, nb, c]. The softmax runs in float (double for double inputs); -inf gates get weight 0.
torch::Tensor gated_pool(const torch::Tensor& values, const torch::Tensor& gates);

/// HCA compression of m whole blocks. rows: [B, m r, 2c] = [kv | z]; pos_bias: [r, c].
/// -> [B, m, c]
torch::Tensor compress_blocks(const torch::Tensor& rows,
                              const torch::Tensor& pos_bias,
                              int64_t rate);

/// CSA overlapped compression of m whole blocks: entry e pools its own block with
/// (kv_a, z_a + bias_a) and the previous block with (kv_b, z_b + bias_b), softmax over the 2r
/// positions per channel. rows: [B, m r, 4c] = [kv_a | z_a | kv_b | z_b]; prev: [B, r, 2c] =
/// [kv_b | z_b] of the block before the first one, undefined when there is none (that half then
/// has values 0 and gates -inf). -> [B, m, c]
torch::Tensor compress_blocks_overlapped(const torch::Tensor& rows,
                                         const torch::Tensor& bias_a,
                                         const torch::Tensor& bias_b,
                                         const torch::Tensor& prev,
                                         int64_t rate);

/// The blocks one call compresses.
struct NewBlocks {
  torch::Tensor rows;       // [B, count * r, k c]
  int64_t first_entry = 0;  // index of the first new entry
  int64_t count = 0;
};

/// The compressor rows of the blocks this call completes. rows: [B, T, k c], this chunk's
/// per-token compressor inputs. Without a state every block of rows is returned, the trailing
/// partial one padded with `pad_row` ([k c]: 0 for values, -inf for gates). With a state the
/// stored incomplete block ("pending") is prepended, only complete blocks are returned, and the
/// remainder is stored back.
NewBlocks take_blocks(DecodeState* state,
                      const torch::Tensor& rows,
                      const torch::Tensor& pad_row,
                      int64_t rate);

/// Appends new rows [B, m, ·] to the exact-size state entry `name` (created empty) and returns
/// all of them; without a state returns `fresh`.
torch::Tensor cache_rows(DecodeState* state, const std::string& name, const torch::Tensor& fresh);

/// Pooled entries [B, m, c] -> KV entries: rms_norm(., kv_norm), then RoPE at position e * r for
/// entry e = first_entry + i.
torch::Tensor finish_entries(const CompressedSpec& spec,
                             const torch::Tensor& pooled,
                             const torch::Tensor& kv_norm,
                             int64_t first_entry);

/// Raw kv rows [B, T, c] at positions offset.. -> rms_norm(., kv_norm), RoPE at offset + t.
torch::Tensor finish_raw(const CompressedSpec& spec,
                         const torch::Tensor& raw,
                         const torch::Tensor& kv_norm,
                         int64_t offset);

/// Query heads: q_up(q_down x) as [B, T, H, c] -> rms_norm(., q_norm), RoPE at offset + t.
torch::Tensor finish_queries(const CompressedSpec& spec,
                             const torch::Tensor& q,
                             const torch::Tensor& q_norm,
                             int64_t offset);

/// The raw keys a chunk sees: the ring of earlier tokens followed by the chunk's own rows.
struct RawWindow {
  torch::Tensor kv;         // [B, S + T, c]
  torch::Tensor positions;  // [S + T] int64, absolute positions
};

/// Builds the raw window for a chunk of finished raw rows [B, T, c] at `offset`, and (with a
/// state) writes the chunk into the ring "window_kv" of the last `window` tokens (slot p % window).
RawWindow raw_window(const CompressedSpec& spec,
                     DecodeState* state,
                     const torch::Tensor& raw,
                     int64_t offset);

/// Entries visible to the queries at positions offset..offset+T-1: [T, nb], (e + 1) r <= p.
torch::Tensor entry_visibility(
    int64_t offset, int64_t seq_len, int64_t num_entries, int64_t rate, torch::Device device);

/// A per-call bool keep mask [T, T] / [B, T, T] / [B, 1, T, T] (true = attend) -> [B or 1, T, T];
/// undefined when attn_mask is. Additive (float) and per-head masks raise: a compressed entry
/// pools many tokens, so only "hidden or not" carries over to it.
torch::Tensor keep_from_attn_mask(const std::string& mechanism,
                                  const torch::Tensor& attn_mask,
                                  int64_t batch_size,
                                  int64_t seq_len);

/// Entries a per-call keep mask leaves visible: entry e pools the tokens of block e (and of
/// block e - 1 when `overlapped`, CSA), and query t may see it only if keep[t, s] holds for
/// every one of them, so a hidden token never reaches a query through an entry.
///   keep: bool [B', T, T] -> [B', T, nb]
torch::Tensor entry_keep_from_mask(const torch::Tensor& keep,
                                   int64_t num_entries,
                                   int64_t rate,
                                   bool overlapped);

/// The shared-KV core: per head softmax over [entries ; raw window] (keys = values) with the
/// sink logit, scale c^-1/2, then RoPE at -p on the output when spec.rope is set.
///   q: [B, T, H, c], entries: [B, nb, c], entry_keep: bool [B or 1, T, nb],
///   raw_mask: bool [B or 1, T, S + T] over the window's columns, undefined = all kept
///   -> output [B, T, H, c], weights [B, H, T, nb + S + T] when need_weights.
AttentionResult shared_kv_attention(const CompressedSpec& spec,
                                    const torch::Tensor& q,
                                    const torch::Tensor& entries,
                                    const torch::Tensor& entry_keep,
                                    const RawWindow& window,
                                    const torch::Tensor& raw_mask,
                                    const torch::Tensor& sink,
                                    int64_t offset,
                                    bool need_weights);

/// The same core on the gather kernel: each query attends to its own key list, the listed
/// entries followed by the (at most `window`) raw tokens of its window, over the keys
/// [entries ; window.kv], with the sink in the kernel. O(T (k + window) c) instead of
/// O(T (nb + T) c); no attention weights.
///   entry_indices: int64 [B, T, k] entry numbers (-1 = unused slot); other arguments as in
///   shared_kv_attention -> output [B, T, H, c]
torch::Tensor shared_kv_gather_attention(const CompressedSpec& spec,
                                         const torch::Tensor& q,
                                         const torch::Tensor& entries,
                                         const torch::Tensor& entry_indices,
                                         const RawWindow& window,
                                         const torch::Tensor& raw_mask,
                                         const torch::Tensor& sink,
                                         int64_t offset);

}  // namespace detail
}  // namespace attnkit
