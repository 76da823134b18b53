#include <attnkit/sparse/masker.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <mutex>
#include <sstream>

namespace attnkit {
namespace sparse {

namespace {

using json = nlohmann::ordered_json;

std::string shape_str(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

}  // namespace

// ---- MaskerSize ---------------------------------------------------------------------------

std::string MaskerSize::str() const {
  if (!is_fraction_) return std::to_string(static_cast<int64_t>(value_));
  std::ostringstream os;
  os << value_;
  std::string s = os.str();
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// ---- MaskerConfig -------------------------------------------------------------------------

struct MaskerConfig::Json {
  json value;
};

MaskerConfig MaskerConfig::parse(const std::string& json_object) {
  json parsed;
  try {
    parsed = json::parse(json_object);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "masker config: invalid JSON (", e.what(), "): ", json_object);
  }
  TORCH_CHECK(parsed.is_object(), "masker config: expected a JSON object, got ", parsed.dump());
  TORCH_CHECK(parsed.contains("type") && parsed["type"].is_string(),
              "masker config: expected a string \"type\", got ", parsed.dump());
  MaskerConfig config;
  config.type_ = parsed["type"].get<std::string>();
  config.json_ = std::make_shared<const Json>(Json{std::move(parsed)});
  config.read_.insert("type");
  return config;
}

std::string MaskerConfig::dump() const {
  return json_->value.dump();
}

bool MaskerConfig::has(const std::string& key) const {
  return json_->value.contains(key);
}

namespace {

const json& lookup(const json& object, const std::string& type, const std::string& key) {
  TORCH_CHECK(object.contains(key), "masker '", type, "': missing \"", key, "\"");
  return object[key];
}

}  // namespace

double MaskerConfig::number(const std::string& key) const {
  read_.insert(key);
  const json& v = lookup(json_->value, type_, key);
  TORCH_CHECK(v.is_number(), "masker '", type_, "': \"", key, "\" expected a number, got ",
              v.dump());
  return v.get<double>();
}

double MaskerConfig::number(const std::string& key, double fallback) const {
  return has(key) ? number(key) : (read_.insert(key), fallback);
}

int64_t MaskerConfig::integer(const std::string& key) const {
  read_.insert(key);
  const json& v = lookup(json_->value, type_, key);
  TORCH_CHECK(v.is_number_integer(), "masker '", type_, "': \"", key,
              "\" expected an integer, got ", v.dump());
  return v.get<int64_t>();
}

int64_t MaskerConfig::integer(const std::string& key, int64_t fallback) const {
  return has(key) ? integer(key) : (read_.insert(key), fallback);
}

MaskerSize MaskerConfig::size(const std::string& key) const {
  read_.insert(key);
  const json& v = lookup(json_->value, type_, key);
  TORCH_CHECK(v.is_number(), "masker '", type_, "': \"", key,
              "\" expected a fraction (0.1) or a count (128), got ", v.dump());
  if (v.is_number_float()) return MaskerSize(v.get<double>());
  return MaskerSize(v.get<int64_t>());
}

MaskerSize MaskerConfig::size(const std::string& key, MaskerSize fallback) const {
  return has(key) ? size(key) : (read_.insert(key), fallback);
}

std::string MaskerConfig::string(const std::string& key) const {
  read_.insert(key);
  const json& v = lookup(json_->value, type_, key);
  TORCH_CHECK(v.is_string(), "masker '", type_, "': \"", key, "\" expected a string, got ",
              v.dump());
  return v.get<std::string>();
}

std::string MaskerConfig::string(const std::string& key, const std::string& fallback) const {
  return has(key) ? string(key) : (read_.insert(key), fallback);
}

bool MaskerConfig::boolean(const std::string& key, bool fallback) const {
  read_.insert(key);
  if (!has(key)) return fallback;
  const json& v = json_->value[key];
  TORCH_CHECK(v.is_boolean(), "masker '", type_, "': \"", key, "\" expected true or false, got ",
              v.dump());
  return v.get<bool>();
}

void MaskerConfig::finish() const {
  for (const auto& item : json_->value.items()) {
    if (read_.count(item.key())) continue;
    std::string known;
    for (const auto& k : read_) {
      if (k != "type") known += (known.empty() ? "" : ", ") + k;
    }
    TORCH_CHECK(false, "masker '", type_, "': unknown key \"", item.key(), "\" (expected ",
                known.empty() ? std::string("none") : known, ")");
  }
}

// ---- MaskerState --------------------------------------------------------------------------

torch::Tensor MaskerState::get(const std::string& key, int64_t layer) const {
  auto it = entries_.find({key, layer});
  return it == entries_.end() ? torch::Tensor() : it->second;
}

void MaskerState::set(const std::string& key, int64_t layer, torch::Tensor value) {
  entries_[{key, layer}] = std::move(value);
}

bool MaskerState::has(const std::string& key, int64_t layer) const {
  return entries_.count({key, layer}) > 0;
}

// ---- MaskerInputs -------------------------------------------------------------------------

int64_t MaskerInputs::layer(const char* masker) const {
  TORCH_CHECK(layer_idx.has_value(), "masker '", masker,
              "': needs layer_idx (it caches per layer); pass one to add_mask");
  return *layer_idx;
}

torch::Tensor MaskerInputs::keys_per_head() const {
  const int64_t G = heads / kv_heads;
  if (G == 1) return keys;
  return keys.unsqueeze(2)
      .expand({batch, kv_heads, G, k_len, keys.size(3)})
      .reshape({batch, heads, k_len, keys.size(3)});
}

torch::Tensor MaskerInputs::raw_scores() const {
  const auto compute = queries.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const int64_t G = heads / kv_heads;
  // Grouped: [B, Hkv, G * Tq, D] x [B, Hkv, D, Tk] without repeating the keys.
  auto q = queries.to(compute).reshape({batch, kv_heads, G * q_len, queries.size(3)});
  auto s = torch::matmul(q, keys.to(compute).transpose(-2, -1));
  return s.view({batch, heads, q_len, k_len});
}

// ---- Masker -------------------------------------------------------------------------------

std::vector<int64_t> check_call(const std::string& who,
                                const torch::Tensor& queries,
                                const torch::Tensor& keys,
                                const torch::Tensor& values,
                                const torch::Tensor& attention_mask) {
  auto shape_of = [](const torch::Tensor& t) {
    return t.defined() ? shape_str(t) : std::string("undefined");
  };
  TORCH_CHECK(queries.defined() && queries.dim() == 4, who,
              ": queries must be [B, H, Tq, D], got ", shape_of(queries));
  TORCH_CHECK(keys.defined() && keys.dim() == 4, who, ": keys must be [B, Hkv, Tk, D], got ",
              shape_of(keys));
  TORCH_CHECK(values.defined() && values.dim() == 4, who,
              ": values must be [B, Hkv, Tk, Dv], got ", shape_of(values));
  const int64_t B = queries.size(0), H = queries.size(1), Tq = queries.size(2);
  const int64_t Hkv = keys.size(1), Tk = keys.size(2);
  TORCH_CHECK(keys.size(0) == B && keys.size(3) == queries.size(3), who, ": keys must be [B=", B,
              ", Hkv, Tk, D=", queries.size(3), "], got ", shape_str(keys));
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, who, ": query heads (", H,
              ") must be a multiple of key heads (", Hkv, ")");
  TORCH_CHECK(values.size(0) == B && values.size(1) == Hkv && values.size(2) == Tk, who,
              ": values must be [B=", B, ", Hkv=", Hkv, ", Tk=", Tk, ", Dv], got ",
              shape_str(values));
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.dim() == 4 && attention_mask.size(0) == B &&
                    (attention_mask.size(1) == 1 || attention_mask.size(1) == H) &&
                    attention_mask.size(2) == Tq && attention_mask.size(3) >= Tk,
                who, ": attention_mask must be [B=", B, ", 1 or H=", H, ", Tq=", Tq,
                ", >= Tk=", Tk, "], got ", shape_str(attention_mask));
  }
  return {B, H, Tq, Tk};
}

Mask Masker::add_mask(const torch::Tensor& keys,
                      const torch::Tensor& queries,
                      const torch::Tensor& values,
                      const torch::Tensor& attention_mask,
                      double scaling,
                      double dropout,
                      MaskerState& state,
                      const Mask& previous_mask,
                      std::optional<int64_t> layer_idx) const {
  const std::string who = "masker '" + type() + "'";
  const std::vector<int64_t> shape = check_call(who, queries, keys, values, attention_mask);
  TORCH_CHECK(previous_mask.shape() == shape, who, ": previous_mask must be ",
              torch::IntArrayRef(shape), ", got ", torch::IntArrayRef(previous_mask.shape()));
  MaskerInputs in;
  in.batch = shape[0];
  in.heads = shape[1];
  in.q_len = shape[2];
  in.k_len = shape[3];
  in.kv_heads = keys.size(1);
  if (attention_mask.defined()) in.attention_mask = attention_mask.narrow(3, 0, in.k_len);
  if (previous_mask.is_full()) return previous_mask;
  in.keys = keys;
  in.queries = queries;
  in.values = values;
  in.scaling = scaling;
  in.dropout = dropout;
  in.state = &state;
  in.layer_idx = layer_idx;
  return compute(in, previous_mask);
}

// ---- registry -----------------------------------------------------------------------------

namespace detail {
// The built-in maskers, one line each: src/sparse/masker_registry.cpp.
void register_builtin_maskers(std::map<std::string, MaskerFactory>& factories);
}  // namespace detail

namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, MaskerFactory> factories;
};

Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry();
    detail::register_builtin_maskers(reg->factories);
    return reg;
  }();
  return *r;
}

}  // namespace

void register_masker(const std::string& type, MaskerFactory factory) {
  TORCH_CHECK(!type.empty(), "register_masker: type must not be empty");
  TORCH_CHECK(factory, "register_masker: factory for '", type, "' must not be empty");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  TORCH_CHECK(!r.factories.count(type), "register_masker: type '", type,
              "' is already registered");
  r.factories.emplace(type, std::move(factory));
}

std::vector<std::string> masker_types() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> out;
  for (const auto& kv : r.factories) out.push_back(kv.first);
  return out;
}

MaskerPtr make_masker(const std::string& json_object) {
  MaskerConfig config = MaskerConfig::parse(json_object);
  MaskerFactory factory;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.factories.find(config.type());
    if (it == r.factories.end()) {
      std::string known;
      for (const auto& kv : r.factories) known += (known.empty() ? "" : ", ") + kv.first;
      TORCH_CHECK(false, "masker config: unknown type '", config.type(), "' (expected one of ",
                  known, ")");
    }
    factory = it->second;
  }
  MaskerPtr masker = factory(config);
  config.finish();
  return masker;
}

std::vector<MaskerPtr> make_maskers(const std::string& json_array) {
  json parsed;
  try {
    parsed = json::parse(json_array);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "masker configs: invalid JSON (", e.what(), "): ", json_array);
  }
  TORCH_CHECK(parsed.is_array(), "masker configs: expected a JSON array of masker objects, got ",
              parsed.dump());
  std::vector<MaskerPtr> maskers;
  int sampling = 0;
  for (const json& item : parsed) {
    maskers.push_back(make_masker(item.dump()));
    if (maskers.back()->kind() == MaskerKind::kSampling) ++sampling;
  }
  TORCH_CHECK(sampling <= 1, "masker configs: at most one sampling masker is allowed, got ",
              sampling);
  return maskers;
}

// ---- helpers ------------------------------------------------------------------------------

torch::Tensor fill_active(const torch::Tensor& scores, const Mask& mask, double fill) {
  if (mask.is_empty()) return scores;
  if (mask.is_full()) return torch::full_like(scores, fill);
  if (mask.is_dense()) return scores.masked_fill(mask.dense().gt(0), fill);
  return fill_active(scores, row_lists(mask), fill);
}

torch::Tensor fill_active(const torch::Tensor& scores, const RowLists& lists, double fill) {
  // Count the active listings of each position (padding counts 0), so that a padding slot
  // aliasing column 0 cannot undo a real one.
  auto active = (lists.data.gt(0) & lists.cols.ge(0)).to(torch::kInt);
  auto hits = torch::zeros(scores.sizes(), scores.options().dtype(torch::kInt))
                  .scatter_add_(-1, lists.cols.clamp_min(0), active);
  return scores.masked_fill(hits.gt(0), fill);
}

Mask drop_future(const Mask& mask) {
  const auto& shape = mask.shape();
  TORCH_CHECK(shape.size() >= 2, "drop_future: the mask needs at least 2 dims, got ",
              torch::IntArrayRef(shape));
  const int64_t n = shape.back(), q_len = shape[shape.size() - 2];
  auto opts = torch::TensorOptions().device(mask.device()).dtype(torch::kLong);
  if (!mask.is_index()) {
    auto pos = torch::arange(q_len, opts).add(n - q_len).unsqueeze(1);
    auto keep = torch::arange(n, opts).unsqueeze(0).le(pos);  // [Tq, n]
    auto base = mask.is_dense() ? mask.dense()
                                : torch::ones(shape, torch::TensorOptions()
                                                         .dtype(mask.dtype())
                                                         .device(mask.device()));
    return Mask::from_dense(shape, base.mul(keep.to(base.scalar_type())), mask.dtype());
  }
  MaskIndex idx = mask.index();
  const int64_t rows = idx.ptr.numel() - 1;
  auto row = idx.indices.div(n, "floor");
  auto col = idx.indices.remainder(n);
  auto keep = col.le(row.remainder(q_len).add(n - q_len));
  auto kept_rows = row.index({keep});
  auto counts = torch::bincount(kept_rows, {}, rows);
  auto ptr = torch::cat({torch::zeros({1}, opts), counts.cumsum(0)});
  return Mask::from_indices(shape, idx.indices.index({keep}), ptr, idx.data.index({keep}),
                            mask.dtype());
}

torch::Tensor window_columns(int64_t q_len, int64_t n, int64_t w, torch::Device device) {
  auto opts = torch::TensorOptions().device(device).dtype(torch::kLong);
  auto pos = torch::arange(q_len, opts).add(n - q_len).unsqueeze(1);
  auto cols = pos - (w - 1) + torch::arange(w, opts).unsqueeze(0);
  return cols.masked_fill(cols.lt(0), -1);
}

Mask mask_from_columns(std::vector<int64_t> shape, const torch::Tensor& idx, torch::Dtype dtype) {
  if (idx.size(-1) == 0) return Mask::empty(shape, dtype, idx.device());
  return Mask::from_row_wise(shape, idx, {}, dtype, /*use_padding=*/false, /*sparse=*/true);
}

}  // namespace sparse
}  // namespace attnkit
