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

// The table. Keep one entry per mechanism, in the order of reference/mechanisms.md.
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
  };
}

}  // namespace

std::string to_string(const Paper& paper) {
  return paper.authors + ", " + std::to_string(paper.year) + ", \"" + paper.title + "\"";
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
