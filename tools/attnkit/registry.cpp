#include "registry.h"

#include <attnkit/attnkit.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace attnkit::cli {

namespace {

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// Slots and objects of the set-to-set entries.
constexpr int64_t kNumSlots = 8;

// The table: one entry per mechanism, the dense family first, then in the order of
// docs/catalog.md. Sequence mechanisms return an Attention, set-to-set ones a SetModule.
// The sparse settings suit the tour's seq 256 (block sizes dividing it, top_k well below it) and
// stay valid for any seq.
std::vector<Mechanism> make_table() {
  return {
      {"standard",
       "StandardAttention",
       "multi-head attention: every head has its own keys and values",
       {"Vaswani et al.", 2017, "Attention Is All You Need"},
       [](const MechanismConfig& c) {
         return as_attention(
             StandardAttention(StandardAttentionOptions(c.dim, c.num_heads).causal(c.causal)));
       }},
      {"mqa",
       "MultiQueryAttention",
       "all query heads share one key/value head",
       {"Shazeer", 2019, "Fast Transformer Decoding: One Write-Head is All You Need"},
       [](const MechanismConfig& c) {
         return as_attention(
             MultiQueryAttention(MultiQueryAttentionOptions(c.dim, c.num_heads).causal(c.causal)));
       }},
      {"gqa",
       "GroupedQueryAttention",
       "groups of query heads share a key/value head",
       {"Ainslie et al.", 2023,
        "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints"},
       [](const MechanismConfig& c) {
         return as_attention(GroupedQueryAttention(
             GroupedQueryAttentionOptions(c.dim, c.num_heads, c.num_kv_heads).causal(c.causal)));
       }},
      {"mla",
       "MultiHeadLatentAttention",
       "keys and values rebuilt from a small cached latent plus one shared RoPE key",
       {"DeepSeek-AI", 2024,
        "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model"},
       [](const MechanismConfig& c) {
         return as_attention(MultiHeadLatentAttention(
             MultiHeadLatentAttentionOptions(c.dim, c.num_heads).causal(c.causal)));
       }},
      {"bigbird",
       "BigBirdAttention",
       "blocks of 16 see 1 global, 3 window and 1 random block",
       {"Zaheer et al.", 2020, "Big Bird: Transformers for Longer Sequences"},
       [](const MechanismConfig& c) {
         return as_attention(BigBirdAttention(BigBirdAttentionOptions(c.dim, c.num_heads)
                                                  .block_size(16)
                                                  .num_global_blocks(1)
                                                  .num_window_blocks(3)
                                                  .num_random_blocks(1)
                                                  .causal(c.causal)));
       }},
      {"dsa",
       "DeepSeekSparseAttention",
       "a lightning indexer picks the top 32 keys per query",
       {"DeepSeek-AI", 2025,
        "DeepSeek-V3.2-Exp: Boosting Long-Context Efficiency with DeepSeek Sparse Attention"},
       [](const MechanismConfig& c) {
         return as_attention(DeepSeekSparseAttention(
             DeepSeekSparseAttentionOptions(c.dim, c.num_heads).top_k(32).causal(c.causal)));
       }},
      {"minimax",
       "MiniMaxSparseAttention",
       "GQA over the top 4 key blocks of 16 per group, picked by an index branch",
       {"MiniMax", 2026, "MiniMax Sparse Attention (MSA)"},
       [](const MechanismConfig& c) {
         return as_attention(MiniMaxSparseAttention(
             MiniMaxSparseAttentionOptions(c.dim, c.num_heads, c.num_kv_heads)
                 .block_size(16)
                 .top_k(4)
                 .causal(c.causal)));
       }},
      {"hca",
       "HeavilyCompressedAttention",
       "every 8 tokens pooled into one shared KV entry, plus a 16-token raw window",
       {"DeepSeek-AI", 2026, "DeepSeek-V4 (heavily compressed attention, HCA)"},
       [](const MechanismConfig& c) {
         return as_attention(HeavilyCompressedAttention(
             HeavilyCompressedAttentionOptions(c.dim, c.num_heads).compression_rate(8).window(16)));
       }},
      {"csa",
       "CompressedSparseAttention",
       "overlapped 4-token compression, top 8 entries by an indexer, plus a 16-token window",
       {"DeepSeek-AI", 2026, "DeepSeek-V4 (compressed sparse attention, CSA)"},
       [](const MechanismConfig& c) {
         return as_attention(
             CompressedSparseAttention(CompressedSparseAttentionOptions(c.dim, c.num_heads)
                                           .compression_rate(4)
                                           .top_k(8)
                                           .window(16)));
       }},
      {"delta",
       "DeltaAttention",
       "32-token window + 4 sinks, corrected by dense attention every 16th query",
       {"Willette et al.", 2025,
        "Delta Attention: Fast and Accurate Sparse Attention Inference by Delta Correction"},
       [](const MechanismConfig& c) {
         return as_attention(DeltaAttention(
             DeltaAttentionOptions(c.dim, c.num_heads).window(32).sink(4).stride(16)));
       }},
      {"diff",
       "DifferentialAttention",
       "each head subtracts a second softmax map, scaled by a learned lambda",
       {"Ye et al.", 2024, "Differential Transformer"},
       [](const MechanismConfig& c) {
         return as_attention(DifferentialAttention(
             DifferentialAttentionOptions(c.dim, c.num_heads).causal(c.causal)));
       }},
      {"local",
       "LocalAttention",
       "each query sees the 64 keys around it (the past 32 when causal)",
       {"Parmar et al.", 2018, "Image Transformer"},
       [](const MechanismConfig& c) {
         return as_attention(LocalAttention(
             LocalAttentionOptions(c.dim, c.num_heads).window_size(64).causal(c.causal)));
       }},
      {"dilated",
       "DilatedAttention",
       "each query sees every 4th key, counted from itself",
       {"Ding et al.", 2023, "LongNet: Scaling Transformers to 1,000,000,000 Tokens"},
       [](const MechanismConfig& c) {
         return as_attention(
             DilatedAttention(DilatedAttentionOptions(c.dim, c.num_heads).dilation_rate(4)));
       }},
      {"block",
       "BlockAttention",
       "attention inside overlapping blocks of 32 tokens",
       {"Qiu et al.", 2020, "Blockwise Self-Attention for Long Document Understanding"},
       [](const MechanismConfig& c) {
         return as_attention(BlockAttention(
             BlockAttentionOptions(c.dim, c.num_heads).block_size(32).overlap(true)));
       }},
      {"longformer",
       "LongformerAttention",
       "a 64-token window plus global attention at the first token",
       {"Beltagy et al.", 2020, "Longformer: The Long-Document Transformer"},
       [](const MechanismConfig& c) {
         return as_attention(LongformerAttention(
             LongformerAttentionOptions(c.dim, c.num_heads).window_size(64).global_positions({0})));
       }},
      {"alibi",
       "ALiBiAttention",
       "no position embedding: a per-head linear distance penalty on the logits",
       {"Press et al.", 2022,
        "Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation"},
       [](const MechanismConfig& c) {
         return as_attention(
             ALiBiAttention(ALiBiAttentionOptions(c.dim, c.num_heads).causal(c.causal)));
       }},
      {"lsh",
       "LSHAttention",
       "angular LSH buckets of 32, 2 hash rounds; attention inside each bucket",
       {"Kitaev et al.", 2020, "Reformer: The Efficient Transformer"},
       [](const MechanismConfig& c) {
         return as_attention(
             LSHAttention(LSHAttentionOptions(c.dim, c.num_heads).bucket_size(32).num_hashes(2)));
       }},
      {"linear",
       "LinearAttention",
       "softmax replaced by an elu+1 feature map: O(T) time, O(1) decode state",
       {"Katharopoulos et al.", 2020,
        "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"},
       [](const MechanismConfig& c) {
         return as_attention(
             LinearAttention(LinearAttentionOptions(c.dim, c.num_heads).causal(c.causal)));
       }},
      {"gated",
       "GatedAttention",
       "a learned per-token highway gate between GQA and the input",
       {"Srivastava et al.", 2015, "Highway Networks"},
       [](const MechanismConfig& c) {
         return as_attention(GatedAttention(as_attention(GroupedQueryAttention(
             GroupedQueryAttentionOptions(c.dim, c.num_heads, c.num_kv_heads).causal(c.causal)))));
       }},
      {"combined",
       "CombinedAttention",
       "a learned per-token mix of local and linear attention",
       {"attzoo", 2025, "CombinedAttention (learned gate between two attention modules)"},
       [](const MechanismConfig& c) {
         return as_attention(CombinedAttention(
             as_attention(LocalAttention(
                 LocalAttentionOptions(c.dim, c.num_heads).window_size(64).causal(c.causal))),
             as_attention(
                 LinearAttention(LinearAttentionOptions(c.dim, c.num_heads).causal(c.causal)))));
       }},
      {"gdn",
       "GatedDeltaNet",
       "gated delta rule: a decaying fast-weight memory, chunked WY form, O(1) decode state",
       {"Yang et al.", 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule"},
       [](const MechanismConfig& c) {
         return as_attention(
             GatedDeltaNet(GatedDeltaNetOptions(c.dim, c.num_kv_heads, c.num_heads)));
       }},
      {"research",
       "ResearchAttentionModule",
       "maskers composed into one sparse pattern (sink + top-k here), on the gather kernel",
       {"Desai et al.", 2025,
        "vAttention: Verified Sparse Attention (sparse-attention-hub's research attention)"},
       [](const MechanismConfig& c) {
         // Counts, not fractions, so that a prefill and token-by-token decoding pick the same
         // keys (see docs/maskers.md).
         return as_attention(ResearchAttentionModule(
             ResearchAttentionModuleOptions(c.dim, c.num_heads, c.num_kv_heads)
                 .causal(c.causal)
                 .maskers(R"([{"type":"sink","sink_size":4},)"
                          R"({"type":"oracle_top_k","heavy_size":32}])")));
       }},
      {"slot",
       "SlotAttention",
       "set to set: 8 slots compete for the N inputs, refined 3 times by a GRU",
       {"Locatello et al.", 2020, "Object-Centric Learning with Slot Attention"},
       [](const MechanismConfig& c) {
         SlotAttention slots(SlotAttentionOptions(c.dim, kNumSlots));
         return SetModule{slots.ptr(),
                          "inputs",
                          {c.seq_len, c.dim},
                          "slots",
                          [slots](const torch::Tensor& x) mutable { return slots(x); }};
       }},
      {"cjepa",
       "CausalJEPAAttention",
       "set to set: rebuilds masked objects and the next frame of 8-object slot histories",
       {"Nam et al.", 2026,
        "Causal-JEPA: Learning World Models through Object-Level Latent Masking"},
       [](const MechanismConfig& c) {
         // (history + 1 predicted frame) x 8 objects is about seq / 4 tokens: six blocks with
         // a 4 * dim MLP over seq tokens would take longer than the rest of the tour.
         const int64_t history = std::max<int64_t>(1, c.seq_len / (4 * kNumSlots) - 1);
         CausalJEPAAttention predictor(
             CausalJEPAAttentionOptions(c.dim, c.num_heads, kNumSlots, history).pred_frames(1));
         return SetModule{
             predictor.ptr(),
             "slots",
             {history, kNumSlots, c.dim},
             "predictions",
             [predictor](const torch::Tensor& x) mutable { return predictor(x).pred; }};
       }},
  };
}

}  // namespace

std::string to_string(const Paper& paper) {
  return paper.authors + ", " + std::to_string(paper.year) + ", \"" + paper.title + "\"";
}

Attention Mechanism::build_sequence(const MechanismConfig& config) const {
  if (const auto* factory = std::get_if<SequenceFactory>(&build)) return (*factory)(config);
  throw std::invalid_argument(name + " (" + class_name +
                              ") is set-to-set, not a sequence-to-sequence mechanism");
}

SetModule Mechanism::build_set(const MechanismConfig& config) const {
  if (const auto* factory = std::get_if<SetFactory>(&build)) return (*factory)(config);
  throw std::invalid_argument(name + " (" + class_name + ") is not a set-to-set module");
}

const std::vector<Mechanism>& mechanisms() {
  static const std::vector<Mechanism> table = make_table();
  return table;
}

const Mechanism& find_mechanism(const std::string& name) {
  const std::string key = lower(name);
  for (const Mechanism& m : mechanisms()) {
    if (lower(m.name) == key || lower(m.class_name) == key) return m;
  }
  std::string valid;
  for (const Mechanism& m : mechanisms()) valid += (valid.empty() ? "" : ", ") + m.name;
  throw std::invalid_argument("unknown mechanism '" + name + "'; valid names: " + valid);
}

}  // namespace attnkit::cli
