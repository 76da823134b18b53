#include <attnkit/attention/research_attention_module.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "attention/dense_common.h"

namespace attnkit {

namespace {

// Decode-state names of the maskers' per-layer caches: "masker/<key>/<layer>".
constexpr const char* kMaskerPrefix = "masker/";

std::string state_name(const std::pair<std::string, int64_t>& key) {
  return kMaskerPrefix + key.first + "/" + std::to_string(key.second);
}

sparse::MaskerState load_masker_state(const DecodeState& state) {
  sparse::MaskerState out;
  const std::string prefix = kMaskerPrefix;
  for (const std::string& name : state.names()) {
    if (name.rfind(prefix, 0) != 0) continue;
    const auto slash = name.rfind('/');
    out.set(name.substr(prefix.size(), slash - prefix.size()),
            std::stoll(name.substr(slash + 1)), state.get(name));
  }
  return out;
}

void store_masker_state(const sparse::MaskerState& masker_state, DecodeState& state) {
  for (const auto& [key, value] : masker_state.entries()) state.set(state_name(key), value);
}

// Checks the options and builds the maskers.
sparse::ResearchAttention build_research(const ResearchAttentionModuleOptions& o) {
  const char* name = "ResearchAttentionModule";
  TORCH_CHECK(o.dim() > 0, name, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, name, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.num_kv_heads() > 0 && o.num_heads() % o.num_kv_heads() == 0, name,
              ": num_heads (", o.num_heads(), ") must be a positive multiple of num_kv_heads (",
              o.num_kv_heads(), ")");
  TORCH_CHECK(o.head_dim() >= 0, name, ": head_dim must be >= 0, got ", o.head_dim());
  TORCH_CHECK(o.head_dim() > 0 || o.dim() % o.num_heads() == 0, name, ": dim (", o.dim(),
              ") must be divisible by num_heads (", o.num_heads(), ") when head_dim is 0");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, name, ": dropout must be in [0, 1), got ",
              o.dropout());
  TORCH_CHECK(o.layer_idx() >= 0, name, ": layer_idx must be >= 0, got ", o.layer_idx());
  std::string message;
  try {
    return sparse::ResearchAttention::from_json(o.maskers());
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  }
  TORCH_CHECK(false, name, ": maskers: ", message);
}

}  // namespace

ResearchAttentionModuleOptions::ResearchAttentionModuleOptions(int64_t dim,
                                                               int64_t num_heads,
                                                               int64_t num_kv_heads)
    : dim_(dim), num_heads_(num_heads), num_kv_heads_(num_kv_heads) {}

ResearchAttentionModuleImpl::ResearchAttentionModuleImpl(ResearchAttentionModuleOptions options_)
    : options(std::move(options_)), research_(build_research(options)) {
  reset();
}

ResearchAttentionModuleImpl::ResearchAttentionModuleImpl(int64_t dim,
                                                         int64_t num_heads,
                                                         int64_t num_kv_heads)
    : ResearchAttentionModuleImpl(ResearchAttentionModuleOptions(dim, num_heads, num_kv_heads)) {}

int64_t ResearchAttentionModuleImpl::head_dim() const {
  return options.head_dim() > 0 ? options.head_dim() : options.dim() / options.num_heads();
}

void ResearchAttentionModuleImpl::reset() {
  const int64_t D = options.dim(), hd = head_dim();
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(options.bias()));
  };
  q_proj = register_module("q_proj", linear(D, options.num_heads() * hd));
  k_proj = register_module("k_proj", linear(D, options.num_kv_heads() * hd));
  v_proj = register_module("v_proj", linear(D, options.num_kv_heads() * hd));
  o_proj = register_module("o_proj", linear(options.num_heads() * hd, D));
}

void ResearchAttentionModuleImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
}

void ResearchAttentionModuleImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::ResearchAttentionModule(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ", num_kv_heads=" << options.num_kv_heads()
         << ", head_dim=" << head_dim() << ", causal=" << detail::str(options.causal())
         << ", maskers=" << options.maskers() << ")";
}

AttentionOutput ResearchAttentionModuleImpl::run(const torch::Tensor& x,
                                                 const torch::Tensor& attn_mask,
                                                 DecodeState* state,
                                                 bool need_weights) {
  detail::check_sequence_input(mechanism(), x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  const int64_t B = x.size(0), T = x.size(1), H = options.num_heads();
  const int64_t Hkv = options.num_kv_heads(), hd = head_dim();
  auto q = q_proj(x).view({B, T, H, hd}).transpose(1, 2);
  auto k = k_proj(x).view({B, T, Hkv, hd}).transpose(1, 2);
  auto v = v_proj(x).view({B, T, Hkv, hd}).transpose(1, 2);
  if (state) {
    k = state->append("k", k.contiguous(), 2);
    v = state->append("v", v.contiguous(), 2);
  }
  const int64_t Tk = k.size(2);
  // The additive mask the maskers and the attention see: [B or 1, 1 or H, T, Tk].
  torch::Tensor additive;
  if (attn_mask.defined()) {
    DotProductAttentionOptions given;
    detail::add_attn_mask(mechanism(), attn_mask, B, H, T, given);
    additive = given.bias().defined()
                   ? given.bias().to(x.scalar_type())
                   : torch::zeros(given.mask().sizes(), x.options())
                         .masked_fill(given.mask().logical_not(),
                                      -std::numeric_limits<double>::infinity());
  }
  if (options.causal() && T > 1) {
    auto pos = torch::arange(T, x.options().dtype(torch::kLong)).add(Tk - T).unsqueeze(1);
    auto future = torch::arange(Tk, x.options().dtype(torch::kLong)).unsqueeze(0).gt(pos);
    auto causal = torch::zeros({T, Tk}, x.options())
                      .masked_fill(future, -std::numeric_limits<double>::infinity())
                      .view({1, 1, T, Tk});
    additive = additive.defined() ? additive + causal : causal;
  }
  if (additive.defined()) {
    additive = additive.expand({B, additive.size(1), T, Tk});
  }
  sparse::MaskerState masker_state = state ? load_masker_state(*state) : sparse::MaskerState();
  auto r = research_.custom_attention(q, k, v, additive, 1.0 / std::sqrt(static_cast<double>(hd)),
                                      options.dropout(), masker_state, options.layer_idx(),
                                      need_weights, is_training());
  if (state) {
    store_masker_state(masker_state, *state);
    state->advance(T);
  }
  AttentionOutput out;
  out.output = o_proj(r.output.reshape({B, T, H * hd}));
  out.attn_weights = r.weights;
  return out;
}

torch::Tensor ResearchAttentionModuleImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor ResearchAttentionModuleImpl::forward(const torch::Tensor& x,
                                                   const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor ResearchAttentionModuleImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState ResearchAttentionModuleImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput ResearchAttentionModuleImpl::forward_with_aux(const torch::Tensor& x,
                                                              const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
