// Tests for include/attnkit/sparse/learned_maskers.h: HashAttention, Quest and DoubleSparsity
// top-k against hand-computed cases and against naive re-implementations of sparse-attention-
// hub's algorithms written here with plain torch ops (upstream itself cannot run here).

#include <attnkit/sparse/learned_maskers.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "sparse/sparse_test_util.h"

namespace {

using attnkit::sparse::test_util::error_of;
using attnkit::sparse::test_util::expect_equal;
using attnkit::sparse::test_util::f32;

namespace fs = std::filesystem;
using attnkit::sparse::DoubleSparsityTopKMasker;
using attnkit::sparse::DoubleSparsityTopKMaskerOptions;
using attnkit::sparse::HashAttentionLayerWeights;
using attnkit::sparse::HashAttentionMlp;
using attnkit::sparse::HashAttentionSide;
using attnkit::sparse::HashAttentionTopKMasker;
using attnkit::sparse::HashAttentionTopKMaskerOptions;
using attnkit::sparse::HashAttentionWeights;
using attnkit::sparse::make_masker;
using attnkit::sparse::Mask;
using attnkit::sparse::Masker;
using attnkit::sparse::MaskerKind;
using attnkit::sparse::MaskerState;
using attnkit::sparse::QuestTopKMasker;
using attnkit::sparse::QuestTopKMaskerOptions;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInfF = std::numeric_limits<float>::infinity();

void expect_close(const torch::Tensor& got, const torch::Tensor& want) {
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(got.sizes() == want.sizes() && torch::allclose(got, want, 1e-5, 1e-6))
      << "got\n" << got << "\nwant\n" << want;
}

// A fresh directory under the system's temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() /
            ("attnkit_learned_maskers_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(file(name)) << text;
    return file(name);
  }

 private:
  fs::path path_;
};

// add_mask with values = keys, scaling 1, no dropout.
Mask run(const Masker& masker,
         const torch::Tensor& queries,
         const torch::Tensor& keys,
         MaskerState& state,
         const Mask& previous,
         const torch::Tensor& attention_mask = {},
         std::optional<int64_t> layer = 0) {
  return masker.add_mask(keys, queries, keys, attention_mask, 1.0, 0.0, state, previous, layer);
}

Mask empty_for(const torch::Tensor& queries, const torch::Tensor& keys) {
  return Mask::empty({queries.size(0), queries.size(1), queries.size(2), keys.size(2)});
}

// Keys repeated to H query heads (upstream's repeat_kv): head h reads kv head h / (H / Hkv).
torch::Tensor repeat_kv(const torch::Tensor& keys, int64_t heads) {
  return keys.repeat_interleave(heads / keys.size(1), 1);
}

// Upstream's pseudo_quantize, spelled out.
torch::Tensor naive_pseudo_quantize(const torch::Tensor& x, int64_t bits) {
  const double max_quant = std::pow(2.0, static_cast<double>(bits)) - 1.0;
  auto min_val = std::get<0>(x.min(-1, true));
  auto max_val = std::get<0>(x.max(-1, true));
  auto range = max_val - min_val;
  range = torch::where(range == 0, torch::ones_like(range), range);
  auto scale = max_quant / range;
  auto quantized = torch::round((x - min_val) * scale).clamp(0, max_quant);
  return quantized / scale + min_val;
}

// The chosen top-k keys of `result` are the k best of `scores` among the keys inactive in
// `previous` (tie-robust: compares the chosen scores with the k largest ones).
void expect_top_k_of(const Mask& result,
                     const torch::Tensor& previous_dense,
                     const torch::Tensor& scores,
                     int64_t k) {
  auto inactive = previous_dense.eq(0);
  auto fresh = result.dense().gt(0) & inactive;
  expect_equal(fresh.sum(-1), torch::full(scores.sizes().slice(0, 3), k, torch::kLong));
  auto candidates = scores.masked_fill(inactive.logical_not(), -kInf);
  auto want = std::get<0>(candidates.topk(k, -1));
  auto got = std::get<0>(candidates.masked_fill(fresh.logical_not(), -kInf).topk(k, -1));
  expect_equal(got, want);
  // Nothing previously active was dropped.
  EXPECT_TRUE(torch::all(result.dense().ge(previous_dense)).item<bool>());
}

// ===============================================================================================
// HashAttention
// ===============================================================================================

// An MLP from explicit matrices [H, d_in, d_out] and biases [H, d_out].
HashAttentionMlp mlp(std::vector<torch::Tensor> matrix, std::vector<torch::Tensor> bias) {
  return HashAttentionMlp{std::move(matrix), std::move(bias)};
}

// Random weights of `layers` layers for H heads: D -> hidden -> ... -> bits.
HashAttentionLayerWeights random_layer(int64_t heads,
                                       int64_t d,
                                       int64_t hidden,
                                       int64_t bits,
                                       int64_t layers) {
  auto one = [&] {
    HashAttentionMlp m;
    int64_t in = d;
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t out = l + 1 == layers ? bits : hidden;
      m.matrix.push_back(torch::randn({heads, in, out}));
      m.bias.push_back(torch::randn({heads, out}));
      in = out;
    }
    return m;
  };
  HashAttentionMlp q = one();
  HashAttentionMlp k = one();
  return {q, k};
}

torch::Tensor naive_activation(const std::string& name, const torch::Tensor& x) {
  if (name == "relu") return x.clamp_min(0);
  if (name == "silu") return x * torch::sigmoid(x);
  if (name == "gelu") return 0.5 * x * (1 + torch::erf(x / std::sqrt(2.0)));
  return torch::tanh(x);
}

// sign(MLP(x)), one head at a time: x [B, H, T, D].
torch::Tensor naive_signatures(const torch::Tensor& x,
                               const HashAttentionMlp& m,
                               const std::string& activation) {
  std::vector<torch::Tensor> heads;
  for (int64_t h = 0; h < x.size(1); ++h) {
    auto y = x.select(1, h);
    for (size_t l = 0; l < m.matrix.size(); ++l) {
      y = torch::matmul(y, m.matrix[l][h]) + m.bias[l][h];
      if (l + 1 < m.matrix.size()) y = naive_activation(activation, y);
    }
    heads.push_back(y);
  }
  return torch::sign(torch::stack(heads, 1));
}

HashAttentionTopKMaskerOptions hat_options(attnkit::sparse::MaskerSize heavy,
                                           int64_t bits,
                                           int64_t layers,
                                           int64_t hidden,
                                           const std::string& activation,
                                           HashAttentionWeights weights) {
  HashAttentionTopKMaskerOptions o(heavy, bits, layers, hidden, activation);
  o.hat_weights(std::move(weights));
  return o;
}

// One layer, identity matrix, zero bias, H heads (head h's sign flipped when flip[h]):
// signature = sign(x) (or -sign(x)).
HashAttentionWeights sign_weights(int64_t d, std::vector<bool> flip) {
  const int64_t heads = static_cast<int64_t>(flip.size());
  auto eye = torch::eye(d).unsqueeze(0).repeat({heads, 1, 1});
  for (int64_t h = 0; h < heads; ++h) {
    if (flip[h]) eye[h].neg_();
  }
  auto bias = torch::zeros({heads, d});
  HashAttentionWeights w;
  w[0] = HashAttentionLayerWeights{mlp({eye}, {bias}), mlp({eye}, {bias})};
  return w;
}

TEST(LearnedMaskerHashAttention, SignatureIsSignOfMlpForEachActivation) {
  // x = -1 through h = x (layer 0), activation a(h), then out_j = a(h) + c_j (layer 1), with
  // c = [0.2, 0.5, 0, -0.1]: relu(-1) = 0, silu(-1) = -0.269, gelu(-1) = -0.159,
  // tanh(-1) = -0.762, so the signs differ per activation.
  const std::vector<std::pair<std::string, std::vector<float>>> cases = {
      {"relu", {1, 1, 0, -1}},
      {"silu", {-1, 1, -1, -1}},
      {"gelu", {1, 1, -1, -1}},
      {"tanh", {-1, -1, -1, -1}},
  };
  auto w0 = torch::ones({1, 1, 1});
  auto b0 = torch::zeros({1, 1});
  auto w1 = torch::ones({1, 1, 4});
  auto b1 = f32({0.2f, 0.5f, 0.0f, -0.1f}, {1, 4});
  HashAttentionWeights weights;
  weights[0] = HashAttentionLayerWeights{mlp({w0, w1}, {b0, b1}), mlp({w0, w1}, {b0, b1})};
  for (const auto& [activation, want] : cases) {
    SCOPED_TRACE(activation);
    HashAttentionTopKMasker masker(hat_options(2, 4, 2, 1, activation, weights));
    auto x = f32({-1}, {1, 1, 1, 1});
    expect_equal(masker.signatures(x, 0, HashAttentionSide::kQuery), f32(want, {1, 1, 1, 4}));
    expect_equal(masker.signatures(x, 0, HashAttentionSide::kKey), f32(want, {1, 1, 1, 4}));
  }
}

TEST(LearnedMaskerHashAttention, SignaturesMatchNaivePerHeadMlp) {
  torch::manual_seed(1);
  HashAttentionWeights weights;
  weights[0] = random_layer(/*heads=*/3, /*d=*/16, /*hidden=*/8, /*bits=*/6, /*layers=*/3);
  weights[2] = random_layer(3, 16, 8, 6, 3);
  auto x = torch::randn({2, 3, 5, 16});
  for (const std::string activation : {"relu", "silu", "gelu", "tanh"}) {
    SCOPED_TRACE(activation);
    HashAttentionTopKMasker masker(hat_options(2, 6, 3, 8, activation, weights));
    for (int64_t layer : {0, 2}) {
      auto q = masker.signatures(x, layer, HashAttentionSide::kQuery);
      auto k = masker.signatures(x, layer, HashAttentionSide::kKey);
      expect_equal(q, naive_signatures(x, weights[layer].query, activation));
      expect_equal(k, naive_signatures(x, weights[layer].key, activation));
      EXPECT_FALSE(torch::equal(q, k));  // separate query and key MLPs
    }
  }
  // Double inputs give double signatures.
  HashAttentionTopKMasker masker(hat_options(2, 6, 3, 8, "relu", weights));
  auto xd = x.to(torch::kDouble);
  expect_equal(masker.signatures(xd, 0, HashAttentionSide::kQuery),
               naive_signatures(xd, [&] {
                 HashAttentionMlp m = weights[0].query;
                 for (auto& t : m.matrix) t = t.to(torch::kDouble);
                 for (auto& t : m.bias) t = t.to(torch::kDouble);
                 return m;
               }(), "relu"));
}

// Keys whose sign vectors agree with q = (+, +, +, +) in 0, 4, 2, 3 and 1 of 4 places: scores
// sig_q . sig_k = -4, 4, 0, 2, -2.
torch::Tensor hand_keys() {
  return f32({-1, -2, -1, -3,  //
              1, 2, 3, 4,      //
              1, 1, -1, -1,    //
              2, 1, 1, -1,     //
              1, -1, -1, -1},
             {1, 1, 5, 4});
}

TEST(LearnedMaskerHashAttention, ChoosesKeysOfLargestSignatureMatch) {
  HashAttentionTopKMasker masker(hat_options(2, 4, 1, 8, "relu", sign_weights(4, {false})));
  auto q = f32({0.5, 1, 2, 3}, {1, 1, 1, 4});
  auto keys = hand_keys();
  MaskerState state;
  Mask m = run(masker, q, keys, state, empty_for(q, keys));
  expect_equal(m.dense(), f32({0, 1, 0, 1, 0}, {1, 1, 1, 5}));

  // Previously active key 1 is skipped: keys 3 and 2 are added, key 1 kept.
  MaskerState s2;
  Mask prev = Mask::from_dense({1, 1, 1, 5}, f32({0, 1, 0, 0, 0}, {1, 1, 1, 5}));
  expect_equal(run(masker, q, keys, s2, prev).dense(), f32({0, 1, 1, 1, 0}, {1, 1, 1, 5}));

  // The additive mask enters the score: -inf on key 3 -> keys 1 and 2.
  MaskerState s3;
  auto am = f32({0, 0, 0, -kInfF, 0}, {1, 1, 1, 5});
  expect_equal(run(masker, q, keys, s3, empty_for(q, keys), am).dense(),
               f32({0, 1, 1, 0, 0}, {1, 1, 1, 5}));

  // Sampled previous entries keep their weights; three new keys are added at 1.
  MaskerState s4;
  Mask sampled = Mask::from_dense({1, 1, 1, 5}, f32({0.5, 0, 0, 0, 0.25}, {1, 1, 1, 5}));
  HashAttentionTopKMasker three(hat_options(3, 4, 1, 8, "relu", sign_weights(4, {false})));
  expect_equal(run(three, q, keys, s4, sampled).dense(), f32({0.5, 1, 1, 1, 0.25}, {1, 1, 1, 5}));
}

TEST(LearnedMaskerHashAttention, GqaRepeatsKeysToQueryHeadsWithPerHeadWeights) {
  // H = 2 query heads on one kv head. Head 1's MLPs negate (signature -sign(x)) and its query
  // is -q: sig_q = sign(q) as for head 0, but sig_k = -sign(k), so head 1 prefers the keys
  // head 0 ranks last (0 and 4).
  HashAttentionTopKMasker masker(hat_options(2, 4, 1, 8, "relu", sign_weights(4, {false, true})));
  auto q = f32({0.5, 1, 2, 3, -0.5, -1, -2, -3}, {1, 2, 1, 4});
  auto keys = hand_keys();
  MaskerState state;
  Mask m = run(masker, q, keys, state, empty_for(q, keys));
  expect_equal(m.dense(), f32({0, 1, 0, 1, 0, 1, 0, 0, 0, 1}, {1, 2, 1, 5}));
  // The cache holds the keys repeated to both heads, each through its own head's MLP.
  auto cached = state.get(HashAttentionTopKMasker::kKeySignatures, 0);
  auto sign = torch::sign(keys[0][0]);
  expect_equal(cached, torch::stack({sign, -sign}).unsqueeze(0));
}

TEST(LearnedMaskerHashAttention, ScoresAndChoiceMatchNaiveComputation) {
  torch::manual_seed(2);
  HashAttentionWeights weights;
  weights[1] = random_layer(/*heads=*/4, /*d=*/16, /*hidden=*/12, /*bits=*/8, /*layers=*/3);
  HashAttentionTopKMasker masker(hat_options(5, 8, 3, 12, "silu", weights));
  const int64_t B = 2, H = 4, Hkv = 2, Tq = 3, Tk = 40;
  auto q = torch::randn({B, H, Tq, 16});
  auto keys = torch::randn({B, Hkv, Tk, 16});
  auto prev_dense = (torch::rand({B, H, Tq, Tk}) > 0.8).to(torch::kFloat);
  auto am = torch::where(torch::rand({B, 1, Tq, Tk}) > 0.9, torch::full({}, -kInf),
                         torch::zeros({}));
  MaskerState state;
  Mask m = run(masker, q, keys, state, Mask::from_dense({B, H, Tq, Tk}, prev_dense), am, 1);
  // Naive: sign(MLP) on the keys repeated to H heads, sig_q . sig_k^T + mask.
  auto sq = naive_signatures(q, weights[1].query, "silu");
  auto sk = naive_signatures(repeat_kv(keys, H), weights[1].key, "silu");
  auto scores = torch::matmul(sq, sk.transpose(-2, -1)) + am;
  expect_top_k_of(m, prev_dense, scores, 5);
  expect_equal(state.get(HashAttentionTopKMasker::kKeySignatures, 1), sk);
  EXPECT_FALSE(state.has(HashAttentionTopKMasker::kKeySignatures, 0));
}

TEST(LearnedMaskerHashAttention, KeySignaturesAreCachedAndExtendedWithNewKeysOnly) {
  torch::manual_seed(3);
  HashAttentionWeights weights;
  weights[0] = random_layer(2, 8, 6, 4, 2);
  HashAttentionTopKMasker masker(hat_options(2, 4, 2, 6, "relu", weights));
  auto q = torch::randn({1, 2, 1, 8});
  auto keys = torch::randn({1, 2, 10, 8});
  MaskerState state;
  run(masker, q, keys.narrow(2, 0, 6), state, Mask::empty({1, 2, 1, 6}));
  auto first = state.get(HashAttentionTopKMasker::kKeySignatures, 0);
  expect_equal(first, naive_signatures(keys.narrow(2, 0, 6), weights[0].key, "relu"));

  // Second call with 10 keys whose first 6 were changed: had they been recomputed, their
  // signatures would flip; only keys 6..9 are new.
  auto changed = keys.clone();
  changed.narrow(2, 0, 6).neg_();
  run(masker, q, changed, state, Mask::empty({1, 2, 1, 10}));
  auto second = state.get(HashAttentionTopKMasker::kKeySignatures, 0);
  ASSERT_EQ(second.sizes(), (std::vector<int64_t>{1, 2, 10, 4}));
  expect_equal(second.narrow(2, 0, 6), first);
  expect_equal(second.narrow(2, 6, 4),
               naive_signatures(keys.narrow(2, 6, 4), weights[0].key, "relu"));

  // The same count again reuses the cache as is.
  run(masker, q, changed, state, Mask::empty({1, 2, 1, 10}));
  EXPECT_TRUE(state.get(HashAttentionTopKMasker::kKeySignatures, 0).is_same(second));

  // Fewer keys than cached is an error (a new sequence needs a new state).
  auto four = keys.narrow(2, 0, 4);
  EXPECT_THAT(error_of([&] { run(masker, q, four, state, Mask::empty({1, 2, 1, 4})); }),
              HasSubstr("use a new MaskerState per sequence"));
}

TEST(LearnedMaskerHashAttention, FullWhenKeysFitTheBudget) {
  HashAttentionTopKMasker masker(hat_options(5, 4, 1, 8, "relu", sign_weights(4, {false})));
  auto q = f32({1, 1, 1, 1}, {1, 1, 1, 4});
  auto keys = hand_keys();  // Tk = 5 <= 5
  MaskerState state;
  EXPECT_TRUE(run(masker, q, keys, state, empty_for(q, keys)).is_full());
  EXPECT_EQ(state.size(), 0u);
  // Fraction: int(0.5 * 5) = 2 < 5, not full.
  HashAttentionTopKMasker half(hat_options(0.5, 4, 1, 8, "relu", sign_weights(4, {false})));
  Mask m = run(half, q, keys, state, empty_for(q, keys));
  EXPECT_FALSE(m.is_full());
  EXPECT_EQ(m.dense().sum().item<float>(), 2.0f);
  // A FULL previous mask is returned as is.
  Mask full = Mask::full({1, 1, 1, 5});
  EXPECT_TRUE(run(half, q, keys, state, full).is_full());
}

TEST(LearnedMaskerHashAttention, WeightFileRoundTrip) {
  torch::manual_seed(4);
  TempDir dir;
  HashAttentionWeights weights;
  weights[0] = random_layer(2, 8, 6, 4, 2);
  weights[3] = random_layer(2, 8, 6, 4, 2);
  const std::string path = dir.file("hat.pt");
  attnkit::sparse::save_hash_attention_weights(weights, path);

  auto loaded = attnkit::sparse::load_hash_attention_weights(path);
  ASSERT_EQ(loaded.size(), 2u);
  for (int64_t layer : {0, 3}) {
    ASSERT_TRUE(loaded.count(layer));
    const auto& want = weights[layer];
    const auto& got = loaded[layer];
    ASSERT_EQ(got.query.matrix.size(), 2u);
    for (size_t l = 0; l < 2; ++l) {
      expect_equal(got.query.matrix[l], want.query.matrix[l]);
      expect_equal(got.query.bias[l], want.query.bias[l]);
      expect_equal(got.key.matrix[l], want.key.matrix[l]);
      expect_equal(got.key.bias[l], want.key.bias[l]);
    }
  }

  // A masker reading the file picks what one with the weights in memory picks.
  HashAttentionTopKMaskerOptions from_file(3, 4, 2, 6, "gelu");
  from_file.hat_weight_file(path);
  HashAttentionTopKMasker a(from_file);
  HashAttentionTopKMasker b(hat_options(3, 4, 2, 6, "gelu", weights));
  auto q = torch::randn({1, 2, 2, 8});
  auto keys = torch::randn({1, 2, 12, 8});
  MaskerState sa, sb;
  expect_equal(run(a, q, keys, sa, empty_for(q, keys), {}, 3).dense(),
               run(b, q, keys, sb, empty_for(q, keys), {}, 3).dense());
}

TEST(LearnedMaskerHashAttention, WeightFileReadsNestedDictWithTuples) {
  // The layout Python's torch.save(hat_weights) writes, built by hand here: {int: {str: list}},
  // with a tuple instead of a list and an extra key (ignored).
  TempDir dir;
  auto w = torch::ones({1, 2, 3});
  auto b = torch::zeros({1, 3});
  c10::impl::GenericDict inner(c10::StringType::get(), c10::AnyType::get());
  inner.insert("query_matrix", c10::List<torch::Tensor>({w}));
  inner.insert("query_bias", c10::ivalue::Tuple::create({torch::IValue(b)}));
  inner.insert("key_matrix", c10::List<torch::Tensor>({w * 2}));
  inner.insert("key_bias", c10::List<torch::Tensor>({b}));
  inner.insert("note", std::string("ignored"));
  c10::impl::GenericDict root(c10::IntType::get(), c10::AnyType::get());
  root.insert(int64_t{5}, inner);
  auto bytes = torch::pickle_save(torch::IValue(root));
  const std::string path = dir.file("nested.pt");
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto loaded = attnkit::sparse::load_hash_attention_weights(path);
  ASSERT_EQ(loaded.size(), 1u);
  expect_equal(loaded[5].query.matrix[0], w);
  expect_equal(loaded[5].query.bias[0], b);
  expect_equal(loaded[5].key.matrix[0], w * 2);
}

TEST(LearnedMaskerHashAttention, WeightFileErrors) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { attnkit::sparse::load_hash_attention_weights(dir.file("none.pt")); }),
              HasSubstr("cannot open"));
  const std::string junk = dir.write("junk.pt", "not a torch file");
  EXPECT_THAT(error_of([&] { attnkit::sparse::load_hash_attention_weights(junk); }),
              HasSubstr("is not a torch.save / torch::pickle_save file"));
  // A dict without the key MLP.
  c10::Dict<std::string, c10::List<torch::Tensor>> inner;
  inner.insert("query_matrix", c10::List<torch::Tensor>({torch::ones({1, 2, 3})}));
  inner.insert("query_bias", c10::List<torch::Tensor>({torch::ones({1, 3})}));
  c10::Dict<int64_t, c10::Dict<std::string, c10::List<torch::Tensor>>> root;
  root.insert(0, inner);
  auto bytes = torch::pickle_save(torch::IValue(root));
  const std::string partial = dir.file("partial.pt");
  std::ofstream(partial, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  EXPECT_THAT(error_of([&] { attnkit::sparse::load_hash_attention_weights(partial); }),
              HasSubstr("layer 0 has no \"key_matrix\""));
}

TEST(LearnedMaskerHashAttention, ConfigValidation) {
  auto weights = sign_weights(4, {false});
  // Both or neither source.
  HashAttentionTopKMaskerOptions both = hat_options(2, 4, 1, 8, "relu", weights);
  both.hat_weight_file("some_file.pt");
  EXPECT_THAT(error_of([&] { HashAttentionTopKMasker m(both); }),
              HasSubstr("only one of hat_weights or hat_weight_file should be provided"));
  HashAttentionTopKMaskerOptions neither(2, 4, 1, 8, "relu");
  EXPECT_THAT(error_of([&] { HashAttentionTopKMasker m(neither); }),
              HasSubstr("either hat_weights or hat_weight_file must be provided"));
  // Scalars.
  EXPECT_THAT(error_of([&] {
                HashAttentionTopKMasker m(hat_options(0, 4, 1, 8, "relu", weights));
              }),
              HasSubstr("heavy_size must be > 0, got 0"));
  EXPECT_THAT(error_of([&] {
                HashAttentionTopKMasker m(hat_options(2, 4, 1, 8, "elu", weights));
              }),
              HasSubstr("hat_mlp_activation expected one of relu, silu, gelu, tanh, got 'elu'"));
  EXPECT_THAT(error_of([&] {
                HashAttentionTopKMasker m(hat_options(2, 0, 1, 8, "relu", weights));
              }),
              HasSubstr("hat_bits must be > 0, got 0"));
  // The weights against the configuration.
  EXPECT_THAT(error_of([&] {
                HashAttentionTopKMasker m(hat_options(2, 4, 2, 8, "relu", weights));
              }),
              HasSubstr("expected hat_mlp_layers = 2 matrices and biases, got 1"));
  EXPECT_THAT(error_of([&] {
                HashAttentionTopKMasker m(hat_options(2, 5, 1, 8, "relu", weights));
              }),
              HasSubstr("matrix expected [H=1, d_in, d_out=5] (hat_bits)"));
  HashAttentionWeights two = {{0, random_layer(2, 8, 6, 4, 2)}};
  EXPECT_THAT(error_of([&] { HashAttentionTopKMasker m(hat_options(2, 4, 2, 7, "relu", two)); }),
              HasSubstr("matrix expected [H=2, d_in, d_out=7] (hat_mlp_hidden_size)"));
  two[0].key.bias[1] = torch::zeros({2, 3});
  EXPECT_THAT(error_of([&] { HashAttentionTopKMasker m(hat_options(2, 4, 2, 6, "relu", two)); }),
              HasSubstr("layer 0 key MLP layer 1 bias expected [H=2, 4]"));
}

TEST(LearnedMaskerHashAttention, CallErrors) {
  HashAttentionTopKMasker masker(hat_options(2, 4, 1, 8, "relu", sign_weights(4, {false})));
  auto q = f32({1, 1, 1, 1}, {1, 1, 1, 4});
  auto keys = hand_keys();
  MaskerState state;
  EXPECT_THAT(error_of([&] { run(masker, q, keys, state, empty_for(q, keys), {}, std::nullopt); }),
              HasSubstr("masker 'hash_attention_top_k': needs layer_idx"));
  EXPECT_THAT(error_of([&] { run(masker, q, keys, state, empty_for(q, keys), {}, 1); }),
              HasSubstr("no weights for layer_idx 1"));
  auto q2 = torch::ones({1, 2, 1, 4});
  EXPECT_THAT(error_of([&] { run(masker, q2, keys, state, empty_for(q2, keys)); }),
              HasSubstr("keys expected [B, H=1, T, D=4]"));
}

TEST(LearnedMaskerHashAttention, MakeMaskerFromJson) {
  torch::manual_seed(5);
  TempDir dir;
  HashAttentionWeights weights = {{0, random_layer(2, 8, 6, 4, 3)}};
  const std::string path = dir.file("hat.pt");
  attnkit::sparse::save_hash_attention_weights(weights, path);
  auto masker = make_masker(R"({"type": "hash_attention_top_k", "heavy_size": 0.25, "hat_bits": 4,
      "hat_mlp_layers": 3, "hat_mlp_hidden_size": 6, "hat_mlp_activation": "tanh",
      "hat_weight_file": ")" + path + "\"}");
  EXPECT_EQ(masker->type(), "hash_attention_top_k");
  EXPECT_EQ(masker->kind(), MaskerKind::kTopK);
  auto* hat = dynamic_cast<const HashAttentionTopKMasker*>(masker.get());
  ASSERT_NE(hat, nullptr);
  EXPECT_DOUBLE_EQ(hat->options().heavy_size().value(), 0.25);
  EXPECT_TRUE(hat->options().heavy_size().is_fraction());
  EXPECT_EQ(hat->options().hat_mlp_activation(), "tanh");
  expect_equal(hat->weights().at(0).key.matrix[2], weights[0].key.matrix[2]);
  // The JSON route needs the file.
  EXPECT_THAT(error_of([] {
                make_masker(R"({"type": "hash_attention_top_k", "heavy_size": 2, "hat_bits": 4,
                    "hat_mlp_layers": 1, "hat_mlp_hidden_size": 4, "hat_mlp_activation": "relu"})");
              }),
              HasSubstr("missing \"hat_weight_file\""));
}

// ===============================================================================================
// Quest
// ===============================================================================================

QuestTopKMasker quest(attnkit::sparse::MaskerSize heavy, int64_t page_size, int64_t bits = 16) {
  QuestTopKMaskerOptions o(heavy, page_size);
  o.label_bits(bits);
  return QuestTopKMasker(o);
}

// Upstream's algorithm, step by step: repeat_kv, pad the pages with +-inf, amin/amax,
// pseudo-quantise, sum_d max(q*min, q*max), invalid pages -> lowest, topk pages, tokens,
// max with previous, times allowed.
torch::Tensor naive_quest(const torch::Tensor& queries,
                          const torch::Tensor& keys,
                          const torch::Tensor& attention_mask,
                          const torch::Tensor& previous_dense,
                          int64_t k,
                          int64_t ps,
                          int64_t bits) {
  const int64_t B = queries.size(0), H = queries.size(1), Q = queries.size(2);
  auto kr = repeat_kv(keys, H);
  const int64_t T = kr.size(2), D = kr.size(3), P = (T + ps - 1) / ps, pad = P * ps - T;
  auto pmin = torch::constant_pad_nd(kr, {0, 0, 0, pad}, kInf).view({B, H, P, ps, D}).amin(3);
  auto pmax = torch::constant_pad_nd(kr, {0, 0, 0, pad}, -kInf).view({B, H, P, ps, D}).amax(3);
  if (bits < 16) {
    pmin = naive_pseudo_quantize(pmin, bits);
    pmax = naive_pseudo_quantize(pmax, bits);
  }
  auto qq = queries.unsqueeze(3);
  auto scores = torch::maximum(qq * pmin.unsqueeze(2), qq * pmax.unsqueeze(2)).sum(-1);
  torch::Tensor allowed;
  if (attention_mask.defined()) {
    allowed = attention_mask.ge(0).to(torch::kFloat);
    auto ap = torch::constant_pad_nd(allowed, {0, pad}, 0.0);
    if (ap.size(1) != 1) ap = ap.amax(1, true);
    auto valid = ap.view({B, 1, Q, P, ps}).amax(-1).gt(0);
    scores = torch::where(valid, scores, torch::full({}, std::numeric_limits<float>::lowest()));
  }
  const int64_t kp = std::min(P, std::max<int64_t>(3, k / ps));
  auto pages = std::get<1>(scores.topk(kp, -1));
  auto sel = torch::zeros({B, H, Q, P}).scatter_(-1, pages, 1.0);
  auto tokens = sel.repeat_interleave(ps, -1).narrow(-1, 0, T);
  auto dense = torch::maximum(previous_dense.clamp(0, 1), tokens);
  if (allowed.defined()) dense = dense * allowed;
  return dense;
}

TEST(LearnedMaskerQuest, PseudoQuantizeByHand) {
  // 2 bits: 3 steps over [0, 1]: x * 3 = 0, 0.6, 1.5, 2.1, 3 -> 0, 1, 2 (half to even), 2, 3.
  auto x = f32({0.0f, 0.2f, 0.5f, 0.7f, 1.0f}, {1, 5});
  expect_close(attnkit::sparse::pseudo_quantize(x, 2),
               f32({0, 1.0f / 3, 2.0f / 3, 2.0f / 3, 1}, {1, 5}));
  // Each row over its own range; a constant row is unchanged.
  auto rows = f32({-2, 0, 2, 3, 3, 3}, {2, 3});
  expect_close(attnkit::sparse::pseudo_quantize(rows, 1), f32({-2, -2, 2, 3, 3, 3}, {2, 3}));
  torch::manual_seed(6);
  auto r = torch::randn({2, 3, 4, 16});
  expect_equal(attnkit::sparse::pseudo_quantize(r, 4), naive_pseudo_quantize(r, 4));
}

TEST(LearnedMaskerQuest, PageMinMax) {
  // Tk = 5, page_size 2: pages {0, 1}, {2, 3}, {4} (partial).
  auto keys = f32({1, -1, 3, 0, -2, 5, 4, 4, 0, 0}, {1, 1, 5, 2});
  auto [lo, hi] = quest(2, 2).page_bounds(keys);
  expect_equal(lo, f32({1, -1, -2, 4, 0, 0}, {1, 1, 3, 2}));
  expect_equal(hi, f32({3, 0, 4, 5, 0, 0}, {1, 1, 3, 2}));
  // label_bits 1: each page's min (and max) vector snaps to its own two extremes.
  auto wide = f32({0, 1, 10, 0, 4, 2, 6, 9, 0, 2, 10, 10}, {1, 1, 2, 6});  // one page of 2 keys
  auto [qlo, qhi] = quest(2, 2, 1).page_bounds(wide);
  // min = (0, 1, 0, 0, 4, 2): range 4, round(x / 4) = (0, 0, 0, 0, 1, 0) (0.5 -> 0) -> * 4.
  // max = (6, 9, 10, 2, 10, 10): range 8 from 2, round((x - 2) / 8) = (0, 1, 1, 0, 1, 1)
  // -> * 8 + 2.
  expect_equal(qlo, f32({0, 0, 0, 0, 4, 0}, {1, 1, 1, 6}));
  expect_equal(qhi, f32({2, 10, 10, 2, 10, 10}, {1, 1, 1, 6}));
}

// q = (1, -1): page score = max_0 - min_1. Pages of 2 keys: {0,1} -> 1, {2,3} -> 2, {4,5} -> 6,
// {6} -> 4.5.
torch::Tensor quest_keys() {
  return f32({0, 0, 1, 0, 3, 1, 2, 2, 5, -1, 0, 0, 0.5, -4}, {1, 1, 7, 2});
}

TEST(LearnedMaskerQuest, PageScoresChooseAtLeastThreePages) {
  auto q = f32({1, -1}, {1, 1, 1, 2});
  auto keys = quest_keys();
  MaskerState state;
  // k = 2: k // page_size = 1, but at least 3 pages: pages 2, 3, 1 -> tokens 2..6.
  Mask m = run(quest(2, 2), q, keys, state, empty_for(q, keys));
  EXPECT_TRUE(m.is_dense());
  expect_equal(m.dense(), f32({0, 0, 1, 1, 1, 1, 1}, {1, 1, 1, 7}));
  // q = (0.5, 1) scores 0.5 max_0 + max_1: 0.5, 3.5, 2.5, -3.75 -> pages 1, 2, 0.
  auto q2 = f32({0.5, 1}, {1, 1, 1, 2});
  expect_equal(run(quest(2, 2), q2, keys, state, empty_for(q2, keys)).dense(),
               f32({1, 1, 1, 1, 1, 1, 0}, {1, 1, 1, 7}));
}

TEST(LearnedMaskerQuest, NumberOfPages) {
  // Tk = 20, page_size 2: P = 10 pages; k_pages = min(P, max(3, k // 2)).
  torch::manual_seed(7);
  auto q = torch::randn({1, 2, 3, 4});
  auto keys = torch::randn({1, 2, 20, 4});
  MaskerState state;
  // (k, pages)
  const std::vector<std::pair<int64_t, int64_t>> budgets = {
      {2, 3}, {7, 3}, {8, 4}, {14, 7}, {19, 9}};
  for (auto [k, pages] : budgets) {
    SCOPED_TRACE(k);
    Mask m = run(quest(k, 2), q, keys, state, empty_for(q, keys));
    expect_equal(m.dense().sum(-1), torch::full({1, 2, 3}, 2.0f * pages));
  }
  // A fraction: int(0.5 * 20) = 10 -> 5 pages.
  expect_equal(run(quest(0.5, 2), q, keys, state, empty_for(q, keys)).dense().sum(-1),
               torch::full({1, 2, 3}, 10.0f));
  // Fewer pages than 3: all of them (Tk = 5, page_size 4: 2 pages).
  auto k5 = keys.narrow(2, 0, 5);
  expect_equal(run(quest(1, 4), q, k5, state, empty_for(q, k5)).dense(), torch::ones({1, 2, 3, 5}));
}

TEST(LearnedMaskerQuest, AllowedTokens) {
  auto q = f32({1, -1}, {1, 1, 1, 2});
  auto keys = quest_keys();
  MaskerState state;
  // Page 2 (tokens 4, 5) entirely forbidden: it cannot be chosen -> pages 3, 1, 0.
  auto am = f32({0, 0, 0, 0, -kInfF, -kInfF, 0}, {1, 1, 1, 7});
  expect_equal(run(quest(2, 2), q, keys, state, empty_for(q, keys), am).dense(),
               f32({1, 1, 1, 1, 0, 0, 1}, {1, 1, 1, 7}));
  // Only token 5 forbidden: page 2 stays valid and is chosen; token 5 is dropped from the mask,
  // and so is a previously active token 5, while a previously active token 0 is kept.
  auto am5 = f32({0, 0, 0, 0, 0, -1e9f, 0}, {1, 1, 1, 7});
  Mask prev = Mask::from_dense({1, 1, 1, 7}, f32({0.5, 0, 0, 0, 0, 1, 0}, {1, 1, 1, 7}));
  expect_equal(run(quest(2, 2), q, keys, state, prev, am5).dense(),
               f32({0.5, 0, 1, 1, 1, 0, 1}, {1, 1, 1, 7}));
  // A per-head mask: page 2 is forbidden in head 0 only, so it counts as valid (allowed in head
  // 1) and is chosen in both heads; head 0 then loses its tokens.
  auto q2 = f32({1, -1, 1, -1}, {1, 2, 1, 2});
  auto am2 = f32({0, 0, 0, 0, -kInfF, -kInfF, 0, 0, 0, 0, 0, 0, 0, 0}, {1, 2, 1, 7});
  expect_equal(run(quest(2, 2), q2, keys, state, empty_for(q2, keys), am2).dense(),
               f32({0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1}, {1, 2, 1, 7}));
}

TEST(LearnedMaskerQuest, MatchesNaiveWithGqaQuantisationAndMasks) {
  torch::manual_seed(8);
  const int64_t B = 2, H = 4, Hkv = 2, Tq = 3, Tk = 37;
  auto q = torch::randn({B, H, Tq, 8});
  auto keys = torch::randn({B, Hkv, Tk, 8});
  auto prev = torch::where(torch::rand({B, H, Tq, Tk}) > 0.85, torch::rand({B, H, Tq, Tk}),
                           torch::zeros({}));
  auto am = torch::where(torch::rand({B, 1, Tq, Tk}) > 0.7, torch::full({}, -kInf),
                         torch::zeros({}));
  for (int64_t bits : {16, 4, 2}) {
    SCOPED_TRACE(bits);
    MaskerState state;
    Mask m = run(quest(12, 4, bits), q, keys, state, Mask::from_dense({B, H, Tq, Tk}, prev), am);
    expect_equal(m.dense(), naive_quest(q, keys, am, prev, 12, 4, bits));
    Mask none = run(quest(12, 4, bits), q, keys, state, empty_for(q, keys));
    expect_equal(none.dense(), naive_quest(q, keys, {}, torch::zeros({B, H, Tq, Tk}), 12, 4, bits));
  }
}

TEST(LearnedMaskerQuest, FullRule) {
  auto q = f32({1, -1}, {1, 1, 1, 2});
  auto keys = quest_keys();  // Tk = 7
  MaskerState state;
  EXPECT_TRUE(run(quest(7, 2), q, keys, state, empty_for(q, keys)).is_full());
  EXPECT_FALSE(run(quest(6, 2), q, keys, state, empty_for(q, keys)).is_full());
  // max(1, k): int(0.1 * 7) = 0 -> full only when Tk <= 1.
  EXPECT_FALSE(run(quest(0.1, 2), q, keys, state, empty_for(q, keys)).is_full());
  auto one = keys.narrow(2, 0, 1);
  EXPECT_TRUE(run(quest(0.1, 2), q, one, state, empty_for(q, one)).is_full());
}

TEST(LearnedMaskerQuest, ConfigValidationAndJson) {
  EXPECT_THAT(error_of([] { quest(0, 2); }), HasSubstr("QuestTopKMasker: heavy_size must be > 0"));
  EXPECT_THAT(error_of([] { quest(2, 0); }),
              HasSubstr("QuestTopKMasker: page_size must be > 0, got 0"));
  EXPECT_THAT(error_of([] { quest(2, 2, 17); }),
              HasSubstr("label_bits must be in range (0, 16], got 17"));
  EXPECT_THAT(error_of([] { quest(2, 2, 0); }),
              HasSubstr("label_bits must be in range (0, 16], got 0"));
  auto masker = make_masker(R"({"type": "quest_top_k", "heavy_size": 0.05, "page_size": 128})");
  EXPECT_EQ(masker->type(), "quest_top_k");
  EXPECT_EQ(masker->kind(), MaskerKind::kTopK);
  auto* qm = dynamic_cast<const QuestTopKMasker*>(masker.get());
  ASSERT_NE(qm, nullptr);
  EXPECT_EQ(qm->options().page_size(), 128);
  EXPECT_EQ(qm->options().label_bits(), 16);
  auto four = make_masker(
      R"({"type": "quest_top_k", "heavy_size": 64, "page_size": 16, "label_bits": 4})");
  EXPECT_EQ(dynamic_cast<const QuestTopKMasker*>(four.get())->options().label_bits(), 4);
  EXPECT_THAT(error_of([] { make_masker(R"({"type": "quest_top_k", "heavy_size": 64})"); }),
              HasSubstr("missing \"page_size\""));
}

// ===============================================================================================
// DoubleSparsity
// ===============================================================================================

// "key": [[c, ...], ...] (appends only: GCC 12 at -O3 warns falsely on "literal" + string).
std::string channel_json(const std::string& key, const std::vector<std::vector<int64_t>>& heads) {
  std::string s = "\"";
  s += key;
  s += "\": [";
  for (size_t h = 0; h < heads.size(); ++h) {
    s += h ? ", [" : "[";
    for (size_t j = 0; j < heads[h].size(); ++j) {
      if (j) s += ", ";
      s += std::to_string(heads[h][j]);
    }
    s += "]";
  }
  s += "]";
  return s;
}

// {entry, entry, ...}
std::string json_object(const std::vector<std::string>& entries) {
  std::string s = "{";
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i) s += ", ";
    s += entries[i];
  }
  s += "}";
  return s;
}

DoubleSparsityTopKMasker ds(attnkit::sparse::MaskerSize heavy,
                            const std::string& file,
                            int64_t group_factor,
                            int64_t bits,
                            const std::string& selection = "qk_proj") {
  DoubleSparsityTopKMaskerOptions o(heavy, file);
  o.group_factor(group_factor).label_bits(bits).channel_selection(selection);
  return DoubleSparsityTopKMasker(o);
}

// Upstream's algorithm: repeat_kv, gather the head's channels, first r, pseudo-quantise,
// q.k^T / sqrt(r) + mask, previously active -> -inf, topk, scatter 1.0 into the previous mask.
torch::Tensor naive_double_sparsity(const torch::Tensor& queries,
                                    const torch::Tensor& keys,
                                    const torch::Tensor& attention_mask,
                                    const torch::Tensor& previous_dense,
                                    const torch::Tensor& channels,  // [H, C]
                                    int64_t group_factor,
                                    int64_t bits,
                                    int64_t k) {
  const int64_t H = queries.size(1), D = queries.size(3), r = D / group_factor;
  auto kr = repeat_kv(keys, H);
  auto gather = [&](const torch::Tensor& x) {
    auto idx = channels.view({1, H, 1, -1}).expand({x.size(0), H, x.size(2), channels.size(1)});
    auto g = x.gather(-1, idx).narrow(-1, 0, r);
    return bits < 16 ? naive_pseudo_quantize(g, bits) : g;
  };
  auto s = torch::matmul(gather(queries), gather(kr).transpose(2, 3)) / std::sqrt(double(r));
  if (attention_mask.defined()) s = s + attention_mask;
  s = s.masked_fill(previous_dense.ne(0), -kInf);
  auto idx = std::get<1>(s.topk(k, -1));
  return previous_dense.clone().scatter_(-1, idx, 1.0);
}

TEST(LearnedMaskerDoubleSparsity, ChannelsFromFile) {
  TempDir dir;
  const std::string file = dir.write(
      "channels.json",
      json_object({channel_json("model.layers.0.self_attn.qk_proj", {{3, 1, 0, 2}, {0, 2, 1, 3}}),
                   channel_json("model.layers.1.self_attn.qk_proj", {{2, 3}, {1, 0}}),
                   channel_json("model.layers.0.self_attn.k_proj", {{1, 2}, {3, 0}})}));
  auto masker = ds(2, file, /*group_factor=*/2, 16);
  expect_equal(masker.channels(0, 2, 4), torch::tensor({3, 1, 0, 2}, torch::kLong).view({2, 2}));
  expect_equal(masker.channels(1, 2, 4), torch::tensor({2, 3, 1, 0}, torch::kLong).view({2, 2}));
  auto by_k = ds(2, file, 2, 16, "k_proj");
  expect_equal(by_k.channels(0, 2, 4), torch::tensor({1, 2, 3, 0}, torch::kLong).view({2, 2}));
  // group_factor 4: one channel per head.
  expect_equal(ds(2, file, 4, 16).channels(0, 2, 4),
               torch::tensor({3, 0}, torch::kLong).view({2, 1}));
  // Errors per call.
  EXPECT_THAT(error_of([&] { masker.channels(2, 2, 4); }),
              HasSubstr("no sorted channels for model.layers.2.self_attn.qk_proj"));
  EXPECT_THAT(error_of([&] { masker.channels(0, 4, 4); }),
              HasSubstr("expected one channel list per query head (4), got 2"));
  EXPECT_THAT(error_of([&] { masker.channels(1, 2, 8); }),
              HasSubstr("model.layers.1.self_attn.qk_proj[0] expected at least head_dim // "
                        "group_factor = 4 channels, got 2"));
  EXPECT_THAT(error_of([&] { masker.channels(0, 2, 2); }),
              HasSubstr("[0] channel expected in [0, 2), got 3"));
  EXPECT_THAT(error_of([&] { ds(2, file, 8, 16).channels(0, 2, 4); }),
              HasSubstr("head_dim // group_factor must be >= 1, got 4 // 8 = 0"));
}

TEST(LearnedMaskerDoubleSparsity, ScoresUseOnlyTheOutlierChannels) {
  // D = 4, group_factor 2: channels 3 and 1 of [3, 1, 0, 2]. q = (10, 1, -10, 2):
  // s_j = (2 k_j3 + k_j1) / sqrt(2); channels 0 and 2 would reverse the ranking.
  TempDir dir;
  const std::string file = dir.write(
      "c.json", json_object({channel_json("model.layers.4.self_attn.qk_proj", {{3, 1, 0, 2}})}));
  auto q = f32({10, 1, -10, 2}, {1, 1, 1, 4});
  auto keys = f32({5, 0, 0, 0,    // s = 0
                   0, 3, 0, 1,    // s = 5 / sqrt2
                   -1, 1, 1, 2,   // s = 5 / sqrt2
                   0, 0, 0, 3,    // s = 6 / sqrt2
                   9, 0, -9, 0},  // s = 0 (but q.k = 180 on all channels)
                  {1, 1, 5, 4});
  MaskerState state;
  Mask one = run(ds(1, file, 2, 16), q, keys, state, empty_for(q, keys), {}, 4);
  expect_equal(one.dense(), f32({0, 0, 0, 1, 0}, {1, 1, 1, 5}));
  // The scale: with the additive mask -5/sqrt(2) on key 3 and +0.5 on key 0, key 0 (0.5) loses
  // to keys 1 and 2 (3.54) while key 3 falls to 0.707.
  auto am = f32({0.5f, 0, 0, -5.0f / std::sqrt(2.0f), 0}, {1, 1, 1, 5});
  Mask two = run(ds(2, file, 2, 16), q, keys, state, empty_for(q, keys), am, 4);
  expect_equal(two.dense(), f32({0, 1, 1, 0, 0}, {1, 1, 1, 5}));
  // Previously active key 3 is skipped and keeps its weight; one of the tied keys 1, 2 is added.
  Mask prev = Mask::from_dense({1, 1, 1, 5}, f32({0, 0, 0, 0.5, 0}, {1, 1, 1, 5}));
  Mask three = run(ds(1, file, 2, 16), q, keys, state, prev, {}, 4);
  EXPECT_EQ(three.dense()[0][0][0][3].item<float>(), 0.5f);
  EXPECT_EQ(three.dense().gt(0).sum().item<int64_t>(), 2);
  EXPECT_EQ((three.dense()[0][0][0][1] + three.dense()[0][0][0][2]).item<float>(), 1.0f);
}

TEST(LearnedMaskerDoubleSparsity, QuantisationChangesTheChoice) {
  // D = 8, group_factor 2: r = 4 channels 0..3; q_g = (1, 1, 1, 1) (constant: unchanged by the
  // quantisation). Key a = (0, 0.4, 0.4, 1): sum 1.8, with 1 bit (0, 0, 0, 1): 1.
  // Key b = (0, 0.6, 0, 0.8): sum 1.4, with 1 bit (0, 0.8, 0, 0.8): 1.6. Key c: 0.1.
  TempDir dir;
  const std::string file = dir.write(
      "c.json",
      json_object({channel_json("model.layers.0.self_attn.qk_proj", {{0, 1, 2, 3, 4, 5, 6, 7}})}));
  auto q = f32({1, 1, 1, 1, 9, 9, 9, 9}, {1, 1, 1, 8});
  auto keys = f32({0, 0.4f, 0.4f, 1, 0, 0, 0, 0,  //
                   0, 0.6f, 0, 0.8f, 0, 0, 0, 0,  //
                   0, 0, 0, 0.1f, 0, 0, 0, 0},
                  {1, 1, 3, 8});
  MaskerState state;
  expect_equal(run(ds(1, file, 2, 16), q, keys, state, empty_for(q, keys)).dense(),
               f32({1, 0, 0}, {1, 1, 1, 3}));
  expect_equal(run(ds(1, file, 2, 1), q, keys, state, empty_for(q, keys)).dense(),
               f32({0, 1, 0}, {1, 1, 1, 3}));
}

TEST(LearnedMaskerDoubleSparsity, MatchesNaiveWithGqaMasksAndPrevious) {
  torch::manual_seed(9);
  const int64_t B = 2, H = 4, Hkv = 2, Tq = 3, Tk = 30, D = 16;
  std::vector<std::vector<int64_t>> lists;
  for (int64_t h = 0; h < H; ++h) {
    auto perm = torch::randperm(D, torch::kLong);
    lists.emplace_back(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + D);
  }
  TempDir dir;
  const std::string file =
      dir.write("c.json", json_object({channel_json("model.layers.3.self_attn.qk_proj", lists)}));
  auto channels = torch::empty({H, D}, torch::kLong);
  for (int64_t h = 0; h < H; ++h) channels[h] = torch::tensor(lists[h], torch::kLong);
  auto q = torch::randn({B, H, Tq, D});
  auto keys = torch::randn({B, Hkv, Tk, D});
  auto prev = (torch::rand({B, H, Tq, Tk}) > 0.8).to(torch::kFloat);
  auto am = torch::where(torch::rand({B, 1, Tq, Tk}) > 0.8, torch::full({}, -kInf),
                         torch::zeros({}));
  for (auto [gf, bits] : std::vector<std::pair<int64_t, int64_t>>{{4, 4}, {2, 16}, {8, 2}}) {
    SCOPED_TRACE(std::to_string(gf) + " " + std::to_string(bits));
    MaskerState state;
    Mask previous = Mask::from_dense({B, H, Tq, Tk}, prev);
    Mask m = run(ds(5, file, gf, bits), q, keys, state, previous, am, 3);
    expect_equal(m.dense(), naive_double_sparsity(q, keys, am, prev, channels, gf, bits, 5));
    Mask fresh = run(ds(0.2, file, gf, bits), q, keys, state, empty_for(q, keys), {}, 3);
    expect_equal(fresh.dense(), naive_double_sparsity(q, keys, {}, torch::zeros({B, H, Tq, Tk}),
                                                      channels, gf, bits, 6));
  }
}

TEST(LearnedMaskerDoubleSparsity, FullRule) {
  TempDir dir;
  const std::string file = dir.write(
      "c.json", json_object({channel_json("model.layers.0.self_attn.qk_proj", {{0, 1}})}));
  auto q = torch::randn({1, 1, 4, 2});
  auto keys = torch::randn({1, 1, 6, 2});
  MaskerState state;
  // Tk - Tq = 2 <= k = 2: FULL; k = 1: not.
  EXPECT_TRUE(run(ds(2, file, 1, 16), q, keys, state, empty_for(q, keys)).is_full());
  Mask m = run(ds(1, file, 1, 16), q, keys, state, empty_for(q, keys));
  EXPECT_FALSE(m.is_full());
  expect_equal(m.dense().sum(-1), torch::ones({1, 1, 4}));
}

TEST(LearnedMaskerDoubleSparsity, Errors) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { ds(2, dir.file("missing.json"), 2, 4); }),
              HasSubstr("sorted_channel_file does not exist"));
  EXPECT_THAT(error_of([&] { ds(2, dir.write("bad.json", "{oops"), 2, 4); }),
              HasSubstr("invalid JSON in sorted_channel_file"));
  EXPECT_THAT(error_of([&] { ds(2, dir.write("list.json", "[1, 2]"), 2, 4); }),
              HasSubstr("must contain a JSON object, got array"));
  EXPECT_THAT(error_of([&] { ds(2, dir.write("flat.json", R"({"a": [1, 2]})"), 2, 4); }),
              HasSubstr("channel data for a[0] must be a list, got number"));
  EXPECT_THAT(error_of([&] { ds(2, dir.write("str.json", R"({"a": [["1"]]})"), 2, 4); }),
              HasSubstr("channel indices for a[0] must be integers, got \"1\""));
  const std::string file = dir.write(
      "c.json", json_object({channel_json("model.layers.0.self_attn.qk_proj", {{0, 1}})}));
  EXPECT_THAT(error_of([&] { ds(0, file, 2, 4); }), HasSubstr("heavy_size must be > 0"));
  EXPECT_THAT(error_of([&] { ds(2, file, 0, 4); }), HasSubstr("group_factor must be > 0, got 0"));
  EXPECT_THAT(error_of([&] { ds(2, file, 2, 17); }),
              HasSubstr("label_bits must be in range (0, 16], got 17"));
  auto masker = ds(1, file, 1, 16);
  auto q = torch::randn({1, 1, 1, 2});
  auto keys = torch::randn({1, 1, 5, 2});
  MaskerState state;
  EXPECT_THAT(error_of([&] { run(masker, q, keys, state, empty_for(q, keys), {}, std::nullopt); }),
              HasSubstr("masker 'double_sparsity_top_k': needs layer_idx"));
  EXPECT_THAT(error_of([&] { run(masker, q, keys, state, empty_for(q, keys), {}, 7); }),
              HasSubstr("no sorted channels for model.layers.7.self_attn.qk_proj"));
}

TEST(LearnedMaskerDoubleSparsity, MakeMaskerFromJson) {
  TempDir dir;
  const std::string file = dir.write(
      "c.json", json_object({channel_json("model.layers.0.self_attn.q_proj", {{1, 0}})}));
  auto masker = make_masker(R"({"type": "double_sparsity_top_k", "heavy_size": 0.1,
      "sorted_channel_file": ")" + file + R"(", "group_factor": 2, "label_bits": 8,
      "channel_selection": "q_proj"})");
  EXPECT_EQ(masker->type(), "double_sparsity_top_k");
  EXPECT_EQ(masker->kind(), MaskerKind::kTopK);
  auto* d = dynamic_cast<const DoubleSparsityTopKMasker*>(masker.get());
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->options().group_factor(), 2);
  EXPECT_EQ(d->options().label_bits(), 8);
  EXPECT_EQ(d->options().channel_selection(), "q_proj");
  expect_equal(d->channels(0, 1, 2), torch::tensor({1}, torch::kLong).view({1, 1}));
  // Defaults.
  auto dflt = make_masker(R"({"type": "double_sparsity_top_k", "heavy_size": 4,
      "sorted_channel_file": ")" + file + "\"}");
  auto* dd = dynamic_cast<const DoubleSparsityTopKMasker*>(dflt.get());
  EXPECT_EQ(dd->options().group_factor(), 16);
  EXPECT_EQ(dd->options().label_bits(), 4);
  EXPECT_EQ(dd->options().channel_selection(), "qk_proj");
  EXPECT_THAT(error_of([] {
                make_masker(R"({"type": "double_sparsity_top_k", "heavy_size": 4})");
              }),
              HasSubstr("missing \"sorted_channel_file\""));
}

}  // namespace
