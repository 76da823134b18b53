#include <attnkit/sparse/learned_maskers.h>

#include <torch/serialize.h>
#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

namespace attnkit {
namespace sparse {

namespace {

// Queries scored at once: about 4M scores per block (16 MB in float32), as OracleTopKMasker.
constexpr int64_t kScoresPerBlock = int64_t{1} << 22;

constexpr const char* kMlpNames[] = {"query_matrix", "query_bias", "key_matrix", "key_bias"};

std::string shape_str(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

torch::Dtype compute_dtype(const torch::Tensor& x) {
  return x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

bool known_activation(const std::string& name) {
  return name == "relu" || name == "silu" || name == "gelu" || name == "tanh";
}

torch::Tensor activate(const std::string& name, const torch::Tensor& x) {
  if (name == "relu") return torch::relu(x);
  if (name == "silu") return torch::silu(x);
  if (name == "gelu") return torch::gelu(x);  // exact (erf), as torch.nn.functional.gelu
  return torch::tanh(x);
}

// ---- weight file ----------------------------------------------------------------------------

// The tensors of a list or tuple IValue.
std::vector<torch::Tensor> tensor_list(const torch::IValue& v,
                                       const std::string& path,
                                       const std::string& what) {
  std::vector<torch::IValue> items;
  if (v.isTensorList()) return v.toTensorVector();
  if (v.isList()) {
    for (const torch::IValue& item : v.toListRef()) items.push_back(item);
  } else if (v.isTuple()) {
    for (const torch::IValue& item : v.toTupleRef().elements()) items.push_back(item);
  } else {
    TORCH_CHECK(false, "load_hash_attention_weights: '", path, "': ", what,
                " expected a list of tensors, got ", v.tagKind());
  }
  std::vector<torch::Tensor> out;
  for (const torch::IValue& item : items) {
    TORCH_CHECK(item.isTensor(), "load_hash_attention_weights: '", path, "': ", what,
                " expected a list of tensors, got an element of type ", item.tagKind());
    out.push_back(item.toTensor());
  }
  return out;
}

HashAttentionLayerWeights layer_from_ivalue(const torch::IValue& v,
                                            const std::string& path,
                                            int64_t layer) {
  const std::string where = "layer " + std::to_string(layer);
  TORCH_CHECK(v.isGenericDict(), "load_hash_attention_weights: '", path, "': ", where,
              " expected a dict {\"query_matrix\": [...], ...}, got ", v.tagKind());
  std::map<std::string, std::vector<torch::Tensor>> lists;
  for (const auto& entry : v.toGenericDict()) {
    if (!entry.key().isString()) continue;
    const std::string name = entry.key().toStringRef();
    if (std::find(std::begin(kMlpNames), std::end(kMlpNames), name) == std::end(kMlpNames)) {
      continue;  // upstream ignores other keys too
    }
    lists[name] = tensor_list(entry.value(), path, where + " \"" + name + "\"");
  }
  for (const char* name : kMlpNames) {
    TORCH_CHECK(lists.count(name), "load_hash_attention_weights: '", path, "': ", where,
                " has no \"", name, "\"");
  }
  return {{lists["query_matrix"], lists["query_bias"]}, {lists["key_matrix"], lists["key_bias"]}};
}

// ---- checks ---------------------------------------------------------------------------------

// One MLP against the configuration: hat_mlp_layers layers, hidden widths, hat_bits outputs,
// `heads` heads, each layer's input the previous one's output.
void check_mlp(const HashAttentionMlp& mlp,
               const HashAttentionTopKMaskerOptions& o,
               const std::string& where,
               int64_t heads) {
  const int64_t n = static_cast<int64_t>(mlp.matrix.size());
  TORCH_CHECK(n == o.hat_mlp_layers() && static_cast<int64_t>(mlp.bias.size()) == n,
              "HashAttentionTopKMasker: ", where, " expected hat_mlp_layers = ",
              o.hat_mlp_layers(), " matrices and biases, got ", n, " and ", mlp.bias.size());
  for (int64_t l = 0; l < n; ++l) {
    const torch::Tensor& w = mlp.matrix[l];
    const torch::Tensor& b = mlp.bias[l];
    const std::string at = where + " layer " + std::to_string(l);
    TORCH_CHECK(w.defined() && w.dim() == 3 && w.is_floating_point(), "HashAttentionTopKMasker: ",
                at, " matrix expected a floating [H, d_in, d_out] tensor, got ",
                w.defined() ? shape_str(w) : std::string("undefined"));
    const int64_t want_out = l + 1 == n ? o.hat_bits() : o.hat_mlp_hidden_size();
    TORCH_CHECK(w.size(0) == heads && w.size(2) == want_out, "HashAttentionTopKMasker: ", at,
                " matrix expected [H=", heads, ", d_in, d_out=", want_out, "] (",
                l + 1 == n ? "hat_bits" : "hat_mlp_hidden_size", "), got ", shape_str(w));
    if (l > 0) {
      TORCH_CHECK(w.size(1) == mlp.matrix[l - 1].size(2), "HashAttentionTopKMasker: ", at,
                  " matrix expected d_in = ", mlp.matrix[l - 1].size(2),
                  " (the previous layer's output), got ", shape_str(w));
    }
    TORCH_CHECK(b.defined() && b.dim() == 2 && b.size(0) == heads && b.size(1) == want_out,
                "HashAttentionTopKMasker: ", at, " bias expected [H=", heads, ", ", want_out,
                "], got ", b.defined() ? shape_str(b) : std::string("undefined"));
  }
}

void check_weights(const HashAttentionWeights& weights, const HashAttentionTopKMaskerOptions& o) {
  TORCH_CHECK(!weights.empty(), "HashAttentionTopKMasker: hat_weights has no layer");
  for (const auto& [layer, w] : weights) {
    TORCH_CHECK(!w.query.matrix.empty() && w.query.matrix[0].defined() &&
                    w.query.matrix[0].dim() == 3,
                "HashAttentionTopKMasker: layer ", layer,
                " query MLP expected [H, d_in, d_out] matrices");
    const int64_t heads = w.query.matrix[0].size(0);
    const std::string where = "layer " + std::to_string(layer);
    check_mlp(w.query, o, where + " query MLP", heads);
    check_mlp(w.key, o, where + " key MLP", heads);
  }
}

}  // namespace

// ---- weight file I/O --------------------------------------------------------------------------

HashAttentionWeights load_hash_attention_weights(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  TORCH_CHECK(file.good(), "load_hash_attention_weights: cannot open '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  torch::IValue root;
  try {
    root = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "load_hash_attention_weights: '", path,
                "' is not a torch.save / torch::pickle_save file: ", e.what_without_backtrace());
  }
  TORCH_CHECK(root.isGenericDict(), "load_hash_attention_weights: '", path,
              "' expected a dict {layer: {...}}, got ", root.tagKind());
  HashAttentionWeights weights;
  for (const auto& entry : root.toGenericDict()) {
    TORCH_CHECK(entry.key().isInt(), "load_hash_attention_weights: '", path,
                "' expected integer layer keys, got ", entry.key().tagKind());
    const int64_t layer = entry.key().toInt();
    weights[layer] = layer_from_ivalue(entry.value(), path, layer);
  }
  return weights;
}

void save_hash_attention_weights(const HashAttentionWeights& weights, const std::string& path) {
  c10::Dict<int64_t, c10::Dict<std::string, c10::List<torch::Tensor>>> root;
  auto list = [](const std::vector<torch::Tensor>& ts) {
    c10::List<torch::Tensor> out;
    for (const auto& t : ts) out.push_back(t);
    return out;
  };
  for (const auto& [layer, w] : weights) {
    c10::Dict<std::string, c10::List<torch::Tensor>> entry;
    entry.insert("query_matrix", list(w.query.matrix));
    entry.insert("query_bias", list(w.query.bias));
    entry.insert("key_matrix", list(w.key.matrix));
    entry.insert("key_bias", list(w.key.bias));
    root.insert(layer, entry);
  }
  const std::vector<char> bytes = torch::pickle_save(torch::IValue(root));
  std::ofstream file(path, std::ios::binary);
  TORCH_CHECK(file.good(), "save_hash_attention_weights: cannot write '", path, "'");
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  TORCH_CHECK(file.good(), "save_hash_attention_weights: writing '", path, "' failed");
}

// ---- top_k_inactive -----------------------------------------------------------------------------

torch::Tensor top_k_inactive(const MaskerInputs& in,
                             const Mask& previous,
                             int64_t k,
                             const std::function<torch::Tensor(int64_t, int64_t)>& scores) {
  const double inf = std::numeric_limits<double>::infinity();
  RowLists lists;
  if (previous.is_index()) lists = row_lists(previous);
  const int64_t block =
      std::max<int64_t>(1, kScoresPerBlock / std::max<int64_t>(1, in.batch * in.heads * in.k_len));
  std::vector<torch::Tensor> picks;
  for (int64_t q0 = 0; q0 < in.q_len; q0 += block) {
    const int64_t c = std::min(block, in.q_len - q0);
    torch::Tensor s = scores(q0, c);
    if (previous.is_dense()) {
      s = s.masked_fill(previous.dense().narrow(2, q0, c).gt(0), -inf);
    } else if (previous.is_index()) {
      s = fill_active(s, RowLists{lists.cols.narrow(2, q0, c), lists.data.narrow(2, q0, c)},
                      -inf);
    }
    picks.push_back(std::get<1>(s.topk(k, -1)));
  }
  return torch::cat(picks, 2);
}

// ---- HashAttentionTopKMasker ------------------------------------------------------------------

HashAttentionTopKMasker::HashAttentionTopKMasker(HashAttentionTopKMaskerOptions options)
    : options_(std::move(options)) {
  const auto& o = options_;
  TORCH_CHECK(o.heavy_size().value() > 0, "HashAttentionTopKMasker: heavy_size must be > 0, got ",
              o.heavy_size().str());
  TORCH_CHECK(o.hat_bits() > 0, "HashAttentionTopKMasker: hat_bits must be > 0, got ",
              o.hat_bits());
  TORCH_CHECK(o.hat_mlp_layers() > 0, "HashAttentionTopKMasker: hat_mlp_layers must be > 0, got ",
              o.hat_mlp_layers());
  TORCH_CHECK(o.hat_mlp_hidden_size() > 0,
              "HashAttentionTopKMasker: hat_mlp_hidden_size must be > 0, got ",
              o.hat_mlp_hidden_size());
  TORCH_CHECK(known_activation(o.hat_mlp_activation()),
              "HashAttentionTopKMasker: hat_mlp_activation expected one of relu, silu, gelu, "
              "tanh, got '",
              o.hat_mlp_activation(), "'");
  TORCH_CHECK(!(o.hat_weights() && o.hat_weight_file()),
              "HashAttentionTopKMasker: only one of hat_weights or hat_weight_file should be "
              "provided, got both (hat_weight_file '",
              o.hat_weight_file().value_or(""), "')");
  TORCH_CHECK(o.hat_weights() || o.hat_weight_file(),
              "HashAttentionTopKMasker: either hat_weights or hat_weight_file must be provided, "
              "got neither");
  weights_ = o.hat_weights() ? *o.hat_weights() : load_hash_attention_weights(*o.hat_weight_file());
  check_weights(weights_, o);
}

MaskerPtr HashAttentionTopKMasker::from_config(const MaskerConfig& config) {
  HashAttentionTopKMaskerOptions options(
      config.size("heavy_size"), config.integer("hat_bits"), config.integer("hat_mlp_layers"),
      config.integer("hat_mlp_hidden_size"), config.string("hat_mlp_activation"));
  options.hat_weight_file(config.string("hat_weight_file"));
  return std::make_shared<HashAttentionTopKMasker>(std::move(options));
}

HashAttentionLayerWeights HashAttentionTopKMasker::layer_weights(int64_t layer,
                                                                 torch::Device device,
                                                                 torch::Dtype dtype) const {
  auto it = weights_.find(layer);
  TORCH_CHECK(it != weights_.end(), "HashAttentionTopKMasker: no weights for layer_idx ", layer,
              " (the weights have layers ", weights_.begin()->first, " ... ",
              weights_.rbegin()->first, ")");
  // Converted once per (device, dtype) and kept, as upstream moves its weights to the keys'
  // device on the first call.
  std::lock_guard<std::mutex> lock(converted_mutex_);
  auto key = std::make_tuple(device.str(), static_cast<int>(dtype), layer);
  auto found = converted_.find(key);
  if (found != converted_.end()) return found->second;
  auto convert = [&](const std::vector<torch::Tensor>& ts) {
    std::vector<torch::Tensor> out;
    for (const auto& t : ts) out.push_back(t.to(device, dtype));
    return out;
  };
  const HashAttentionLayerWeights& w = it->second;
  HashAttentionLayerWeights out{{convert(w.query.matrix), convert(w.query.bias)},
                                {convert(w.key.matrix), convert(w.key.bias)}};
  converted_.emplace(key, out);
  return out;
}

torch::Tensor HashAttentionTopKMasker::signatures(const torch::Tensor& x,
                                                  int64_t layer,
                                                  HashAttentionSide side) const {
  const auto dtype = compute_dtype(x);
  HashAttentionLayerWeights w = layer_weights(layer, x.device(), dtype);
  const HashAttentionMlp& mlp = side == HashAttentionSide::kQuery ? w.query : w.key;
  const int64_t heads = mlp.matrix[0].size(0), d_in = mlp.matrix[0].size(1);
  TORCH_CHECK(x.dim() == 4 && x.size(1) == heads && x.size(3) == d_in,
              "HashAttentionTopKMasker: layer ", layer, " ",
              side == HashAttentionSide::kQuery ? "queries" : "keys", " expected [B, H=", heads,
              ", T, D=", d_in, "] (the weights' heads and input width), got ", shape_str(x));
  torch::Tensor h = x.to(dtype);
  const size_t n = mlp.matrix.size();
  for (size_t l = 0; l < n; ++l) {
    // Per head: [B, H, T, d_in] x [H, d_in, d_out] + [H, 1, d_out] -> [B, H, T, d_out].
    h = torch::matmul(h, mlp.matrix[l]) + mlp.bias[l].unsqueeze(1);
    if (l + 1 < n) h = activate(options_.hat_mlp_activation(), h);
  }
  return torch::sign(h);
}

torch::Tensor HashAttentionTopKMasker::key_signatures(const MaskerInputs& in,
                                                      int64_t layer) const {
  torch::Tensor cached = in.state->get(kKeySignatures, layer);
  int64_t done = 0;
  if (cached.defined()) {
    done = cached.size(2);
    TORCH_CHECK(cached.size(0) == in.batch && cached.size(1) == in.heads && done <= in.k_len,
                "HashAttentionTopKMasker: the cached key signatures of layer ", layer,
                " are [B, H, Tk, bits] = ", shape_str(cached), " but the call has B=", in.batch,
                ", H=", in.heads, ", Tk=", in.k_len,
                " (fewer keys than cached, or another batch: use a new MaskerState per sequence)");
    if (done == in.k_len) return cached;
  }
  // Only the keys after the cached ones, repeated to the H query heads.
  torch::Tensor new_keys = in.keys_per_head().narrow(2, done, in.k_len - done);
  torch::Tensor fresh = signatures(new_keys, layer, HashAttentionSide::kKey);
  torch::Tensor all = cached.defined() ? torch::cat({cached.to(fresh.scalar_type()), fresh}, 2)
                                       : fresh;
  in.state->set(kKeySignatures, layer, all);
  return all;
}

Mask HashAttentionTopKMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  const int64_t layer = in.layer("hash_attention_top_k");
  const int64_t k = options_.heavy_size().resolve(in.k_len);
  const auto shape = in.mask_shape();
  if (in.k_len <= k) return Mask::full(shape, previous.dtype(), in.queries.device());
  if (k <= 0) return previous;
  torch::Tensor keys_sig = key_signatures(in, layer).transpose(-2, -1);  // [B, H, bits, Tk]
  torch::Tensor query_sig = signatures(in.queries, layer, HashAttentionSide::kQuery);
  auto idx = top_k_inactive(in, previous, k, [&](int64_t q0, int64_t c) {
    auto s = torch::matmul(query_sig.narrow(2, q0, c), keys_sig);
    if (in.attention_mask.defined()) s = s + in.attention_mask.narrow(2, q0, c).to(s.dtype());
    return s;
  });
  Mask heavy = mask_from_columns(shape, idx, previous.dtype());
  return previous.is_empty() ? heavy : previous.merge(heavy);
}

}  // namespace sparse
}  // namespace attnkit
