#include <attnkit/attention/gated_delta_net.h>

#include <torch/autograd.h>
#include <torch/nn/init.h>
#include <torch/torch.h>

#include "attention/dense_common.h"
#include "kernels/gated_delta/kernel.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace attnkit {

namespace {
constexpr const char* kName = "GatedDeltaNet";
constexpr double kL2NormEps = 1e-6;
}  // namespace

// --- decay gate
// -----------------------------------------------------------------------------------

namespace {

void check_gate_options(const DecayGateOptions& options) {
  if (const auto* m = std::get_if<MambaDecayGateOptions>(&options)) {
    TORCH_CHECK(m->normalizer() > 0, kName, ": MambaDecayGateOptions normalizer must be > 0, got ",
                m->normalizer());
    TORCH_CHECK(m->dt_min() > 0, kName, ": MambaDecayGateOptions dt_min must be > 0, got ",
                m->dt_min());
    TORCH_CHECK(m->dt_max() >= m->dt_min(), kName, ": MambaDecayGateOptions dt_max (", m->dt_max(),
                ") must be >= dt_min (", m->dt_min(), ")");
    TORCH_CHECK(m->dt_init_floor() >= 0, kName,
                ": MambaDecayGateOptions dt_init_floor must be >= 0, got ", m->dt_init_floor());
  } else {
    const auto& l = std::get<LogSigmoidDecayGateOptions>(options);
    TORCH_CHECK(l.normalizer() > 0, kName,
                ": LogSigmoidDecayGateOptions normalizer must be > 0, got ", l.normalizer());
  }
}

void print_gate(std::ostream& stream, const DecayGateOptions& options) {
  if (const auto* m = std::get_if<MambaDecayGateOptions>(&options)) {
    stream << "Mamba(normalizer=" << m->normalizer() << ", dt_min=" << m->dt_min()
           << ", dt_max=" << m->dt_max() << ", dt_init_floor=" << m->dt_init_floor() << ")";
  } else {
    stream << "LogSigmoid(normalizer=" << std::get<LogSigmoidDecayGateOptions>(options).normalizer()
           << ")";
  }
}

}  // namespace

GatedDeltaDecayGateImpl::GatedDeltaDecayGateImpl(int64_t dim_,
                                                 int64_t num_heads_,
                                                 DecayGateOptions options_)
    : dim(dim_), num_heads(num_heads_), options(std::move(options_)) {
  TORCH_CHECK(dim > 0, kName, ": decay gate dim must be positive, got ", dim);
  TORCH_CHECK(num_heads > 0, kName, ": decay gate num_heads must be positive, got ", num_heads);
  check_gate_options(options);
  reset();
}

void GatedDeltaDecayGateImpl::reset() {
  proj = register_module("proj",
                         torch::nn::Linear(torch::nn::LinearOptions(dim, num_heads).bias(false)));
  if (std::holds_alternative<MambaDecayGateOptions>(options)) {
    A_log = register_parameter("A_log", torch::empty({num_heads}));
    dt_bias = register_parameter("dt_bias", torch::empty({num_heads}));
  } else {
    A_log = torch::Tensor();
    dt_bias = torch::Tensor();
  }
  reset_parameters();
}

void GatedDeltaDecayGateImpl::reset_parameters() {
  proj->reset_parameters();
  const auto* m = std::get_if<MambaDecayGateOptions>(&options);
  if (m == nullptr) return;
  torch::NoGradGuard no_grad;
  // A ~ U(0, normalizer]: 1 - U[0, 1) lies in (0, 1], so log(A) is finite.
  torch::Tensor a = (1.0 - torch::rand({num_heads}, A_log.options())) * m->normalizer();
  A_log.copy_(a.log());
  // dt log-uniform in [dt_min, dt_max], floored; dt_bias = softplus^-1(dt) = dt + log(-expm1(-dt))
  const double lo = std::log(m->dt_min()), hi = std::log(m->dt_max());
  torch::Tensor dt = (torch::rand({num_heads}, dt_bias.options()) * (hi - lo) + lo).exp();
  dt = dt.clamp_min(m->dt_init_floor());
  dt_bias.copy_(dt + torch::log(-torch::expm1(-dt)));
}

void GatedDeltaDecayGateImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::GatedDeltaDecayGate(dim=" << dim << ", num_heads=" << num_heads << ", ";
  print_gate(stream, options);
  stream << ")";
}

torch::Tensor GatedDeltaDecayGateImpl::forward(const torch::Tensor& x) {
  torch::Tensor logits = proj(x);  // [B, T, H]
  if (std::holds_alternative<MambaDecayGateOptions>(options)) {
    return -A_log.exp() * torch::softplus(logits + dt_bias);
  }
  const double normalizer = std::get<LogSigmoidDecayGateOptions>(options).normalizer();
  return torch::log_sigmoid(logits) / normalizer;
}

// --- short convolution
// ----------------------------------------------------------------------------

GatedDeltaShortConvImpl::GatedDeltaShortConvImpl(int64_t channels_, int64_t kernel_size_)
    : channels(channels_), kernel_size(kernel_size_) {
  TORCH_CHECK(channels > 0, kName, ": short convolution channels must be positive, got ", channels);
  TORCH_CHECK(kernel_size >= 1, kName, ": conv_size must be >= 1, got ", kernel_size);
  reset();
}

void GatedDeltaShortConvImpl::reset() {
  weight = register_parameter("weight", torch::empty({channels, kernel_size}));
  reset_parameters();
}

void GatedDeltaShortConvImpl::reset_parameters() {
  // Conv1d's init: kaiming-uniform with a = sqrt(5) over fan_in = kernel_size (one input
  // channel per group), i.e. U(-1/sqrt(W), 1/sqrt(W)).
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight.view({channels, 1, kernel_size}), std::sqrt(5.0));
}

void GatedDeltaShortConvImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::GatedDeltaShortConv(channels=" << channels << ", kernel_size=" << kernel_size
         << ")";
}

torch::Tensor GatedDeltaShortConvImpl::forward(const torch::Tensor& u,
                                               const torch::Tensor& prefix) {
  const int64_t B = u.size(0), W = kernel_size;
  torch::Tensor left = prefix.defined() ? prefix : torch::zeros({B, W - 1, channels}, u.options());
  torch::Tensor full = torch::cat({left, u}, 1).transpose(1, 2);  // [B, C, W - 1 + T]
  torch::Tensor y = torch::conv1d(full, weight.unsqueeze(1), /*bias=*/torch::Tensor(),
                                  /*stride=*/1, /*padding=*/torch::IntArrayRef{0}, /*dilation=*/1,
                                  /*groups=*/channels);
  return torch::silu(y.transpose(1, 2));  // [B, T, C]
}

// --- the module
// -----------------------------------------------------------------------------------

GatedDeltaNetOptions::GatedDeltaNetOptions(int64_t dim, int64_t num_qk_heads, int64_t num_v_heads)
    : dim_(dim), num_qk_heads_(num_qk_heads), num_v_heads_(num_v_heads) {}

GatedDeltaNetImpl::GatedDeltaNetImpl(GatedDeltaNetOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_qk_heads() > 0, kName, ": num_qk_heads must be positive, got ",
              o.num_qk_heads());
  TORCH_CHECK(o.num_v_heads() > 0, kName, ": num_v_heads must be positive, got ", o.num_v_heads());
  TORCH_CHECK(o.num_v_heads() % o.num_qk_heads() == 0, kName, ": num_v_heads (", o.num_v_heads(),
              ") must be a multiple of num_qk_heads (", o.num_qk_heads(), ")");
  TORCH_CHECK(o.head_qk_dim() >= 0, kName,
              ": head_qk_dim must be >= 0 (0 = dim / num_v_heads), got ", o.head_qk_dim());
  TORCH_CHECK(o.head_v_dim() >= 0, kName, ": head_v_dim must be >= 0 (0 = dim / num_v_heads), got ",
              o.head_v_dim());
  TORCH_CHECK((o.head_qk_dim() > 0 && o.head_v_dim() > 0) || o.dim() % o.num_v_heads() == 0, kName,
              ": dim (", o.dim(), ") must be divisible by num_v_heads (", o.num_v_heads(),
              ") when head_qk_dim or head_v_dim is 0");
  TORCH_CHECK(o.norm_eps() > 0, kName, ": norm_eps must be > 0, got ", o.norm_eps());
  TORCH_CHECK(o.conv_size() >= 1, kName, ": conv_size must be >= 1, got ", o.conv_size());
  check_gate_options(o.decay_gate());
  reset();
}

GatedDeltaNetImpl::GatedDeltaNetImpl(int64_t dim, int64_t num_qk_heads, int64_t num_v_heads)
    : GatedDeltaNetImpl(GatedDeltaNetOptions(dim, num_qk_heads, num_v_heads)) {}

int64_t GatedDeltaNetImpl::head_qk_dim() const {
  return options.head_qk_dim() > 0 ? options.head_qk_dim() : options.dim() / options.num_v_heads();
}

int64_t GatedDeltaNetImpl::head_v_dim() const {
  return options.head_v_dim() > 0 ? options.head_v_dim() : options.dim() / options.num_v_heads();
}

void GatedDeltaNetImpl::reset() {
  const int64_t D = options.dim(), Hqk = options.num_qk_heads(), Hv = options.num_v_heads();
  const int64_t Dqk = Hqk * head_qk_dim(), Dv = Hv * head_v_dim();
  auto linear = [](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  };
  qkv_proj = register_module("qkv_proj", linear(D, 2 * Dqk + Dv));
  g_proj = register_module("g_proj", linear(D, Dv));
  b_proj = register_module("b_proj", linear(D, Hv));
  decay_gate = register_module("decay_gate", GatedDeltaDecayGate(D, Hv, options.decay_gate()));
  qkv_conv1d =
      register_module("qkv_conv1d", GatedDeltaShortConv(2 * Dqk + Dv, options.conv_size()));
  out_norm =
      register_module("out_norm", RMSNorm(RMSNormOptions(head_v_dim()).eps(options.norm_eps())));
  o_proj = register_module("o_proj", linear(Dv, D));
}

void GatedDeltaNetImpl::reset_parameters() {
  detail::reset_linears({qkv_proj, g_proj, b_proj, o_proj});
  decay_gate->reset_parameters();
  qkv_conv1d->reset_parameters();
  out_norm->reset_parameters();
}

void GatedDeltaNetImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::GatedDeltaNet(dim=" << o.dim() << ", num_qk_heads=" << o.num_qk_heads()
         << ", num_v_heads=" << o.num_v_heads() << ", head_qk_dim=" << head_qk_dim()
         << ", head_v_dim=" << head_v_dim() << ", norm_eps=" << o.norm_eps()
         << ", conv_size=" << o.conv_size() << ", decay_gate=";
  print_gate(stream, o.decay_gate());
  stream << ", use_qk_l2norm=" << detail::str(o.use_qk_l2norm()) << ")";
}

AttentionOutput GatedDeltaNetImpl::run(const torch::Tensor& x,
                                       const torch::Tensor& attn_mask,
                                       DecodeState* state,
                                       bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), qkv_proj->weight);
  if (state) check_state(*state, x);
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t Hqk = options.num_qk_heads(), Hv = options.num_v_heads();
  const int64_t Dk = head_qk_dim(), Dv = head_v_dim(), W = options.conv_size();
  const int64_t C = 2 * Hqk * Dk + Hv * Dv;

  torch::Tensor h = x;
  if (attn_mask.defined()) {
    TORCH_CHECK(attn_mask.scalar_type() == torch::kBool, kName,
                ": expected a bool key-padding attn_mask [B, T] (true = real token), got dtype ",
                attn_mask.scalar_type());
    TORCH_CHECK(attn_mask.dim() == 2 && attn_mask.size(0) == B && attn_mask.size(1) == T, kName,
                ": expected a key-padding attn_mask of shape [B, T] = [", B, ", ", T,
                "] (GatedDeltaNet takes no [T, T] masks), got ", attn_mask.sizes());
    h = x * attn_mask.unsqueeze(-1).to(x.scalar_type());
  }

  // qkv projection and the causal short convolution; decoding carries its last W - 1 inputs.
  torch::Tensor u = qkv_proj(h);  // [B, T, C]
  torch::Tensor prefix;
  if (state && state->contains("conv_state")) prefix = state->get("conv_state");
  torch::Tensor mixed = qkv_conv1d(u, prefix);  // [B, T, C]
  if (state) {
    torch::Tensor left = prefix.defined() ? prefix : torch::zeros({B, W - 1, C}, u.options());
    torch::Tensor full = torch::cat({left, u.detach()}, 1);
    state->set("conv_state", full.narrow(1, full.size(1) - (W - 1), W - 1).clone());
  }
  torch::Tensor q = mixed.narrow(2, 0, Hqk * Dk).view({B, T, Hqk, Dk});
  torch::Tensor k = mixed.narrow(2, Hqk * Dk, Hqk * Dk).view({B, T, Hqk, Dk});
  torch::Tensor v = mixed.narrow(2, 2 * Hqk * Dk, Hv * Dv).view({B, T, Hv, Dv});
  if (options.use_qk_l2norm()) {
    q = q * torch::rsqrt(q.square().sum(-1, /*keepdim=*/true) + kL2NormEps);
    k = k * torch::rsqrt(k.square().sum(-1, /*keepdim=*/true) + kL2NormEps);
  }
  torch::Tensor g = decay_gate(h).transpose(1, 2);                 // [B, Hv, T]
  torch::Tensor beta = torch::sigmoid(b_proj(h)).transpose(1, 2);  // [B, Hv, T]

  torch::Tensor initial;
  if (state && state->contains("recurrent_state")) initial = state->get("recurrent_state");
  GatedDeltaRuleOutput rule =
      gated_delta_rule(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g, beta, initial);
  if (state) {
    state->set("recurrent_state", rule.final_state.detach());
    state->advance(T);
  }
  torch::Tensor o = out_norm(rule.output.transpose(1, 2)).reshape({B, T, Hv * Dv});  // [B, T, Dv]
  AttentionOutput out{o_proj(torch::silu(g_proj(h)) * o), torch::Tensor()};
  if (need_weights) {
    // The rule is linear in v with zero initial state: values = the identity give A itself.
    torch::Tensor identity = torch::eye(T, v.options()).expand({B, Hv, T, T});
    out.attn_weights =
        gated_delta_rule(q.transpose(1, 2), k.transpose(1, 2), identity, g, beta).output;
  }
  return out;
}

AttentionOutput GatedDeltaNetImpl::forward_with_aux(const torch::Tensor& x,
                                                    const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, /*need_weights=*/true);
}

torch::Tensor GatedDeltaNetImpl::forward(const torch::Tensor& x) {
  return run(x, torch::Tensor(), nullptr).output;
}

torch::Tensor GatedDeltaNetImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr).output;
}

torch::Tensor GatedDeltaNetImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, torch::Tensor(), &state).output;
}

DecodeState GatedDeltaNetImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

}  // namespace attnkit
