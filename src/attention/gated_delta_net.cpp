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
constexpr const char* kRule = "gated_delta_rule";
constexpr double kL2NormEps = 1e-6;

// --- the rule -----------------------------------------------------------------------------------

struct RuleShape {
  int64_t B, Hqk, Hv, T, Dk, Dv;
};

RuleShape check_rule_inputs(const char* fn,
                            const torch::Tensor& q,
                            const torch::Tensor& k,
                            const torch::Tensor& v,
                            const torch::Tensor& g,
                            const torch::Tensor& beta,
                            const torch::Tensor& initial_state,
                            const GatedDeltaRuleOptions& options) {
  TORCH_CHECK(q.defined() && k.defined() && v.defined() && g.defined() && beta.defined(), fn,
              ": q, k, v, g and beta must all be defined");
  TORCH_CHECK(q.dim() == 4, fn, ": expected q of shape [B, Hqk, T, dk] (4-D), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), fn, ": expected k of q's shape ", q.sizes(), ", got ",
              k.sizes());
  const int64_t B = q.size(0), Hqk = q.size(1), T = q.size(2), Dk = q.size(3);
  TORCH_CHECK(v.dim() == 4 && v.size(0) == B && v.size(2) == T, fn,
              ": expected v of shape [B, Hv, T, dv] with B = ", B, ", T = ", T, ", got ",
              v.sizes());
  const int64_t Hv = v.size(1), Dv = v.size(3);
  TORCH_CHECK(Hqk > 0 && Hv % Hqk == 0, fn, ": the value heads of v (", Hv,
              ") must be a multiple of the query/key heads of q (", Hqk, ")");
  const std::vector<int64_t> gate_shape{B, Hv, T};
  TORCH_CHECK(g.sizes() == gate_shape, fn,
              ": expected g of shape [B, Hv, T] = ", c10::IntArrayRef(gate_shape), ", got ",
              g.sizes());
  TORCH_CHECK(beta.sizes() == gate_shape, fn,
              ": expected beta of shape [B, Hv, T] = ", c10::IntArrayRef(gate_shape), ", got ",
              beta.sizes());
  TORCH_CHECK(q.is_floating_point(), fn, ": expected floating-point inputs, got ", q.scalar_type());
  for (const torch::Tensor* t : {&k, &v, &g, &beta}) {
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), fn, ": expected every input of q's dtype ",
                q.scalar_type(), ", got ", t->scalar_type());
  }
  if (initial_state.defined()) {
    const std::vector<int64_t> state_shape{B, Hv, Dk, Dv};
    TORCH_CHECK(initial_state.sizes() == state_shape, fn,
                ": expected initial_state of shape [B, Hv, dk, dv] = ",
                c10::IntArrayRef(state_shape), ", got ", initial_state.sizes());
    TORCH_CHECK(initial_state.scalar_type() == q.scalar_type(), fn,
                ": expected initial_state of q's dtype ", q.scalar_type(), ", got ",
                initial_state.scalar_type());
  }
  TORCH_CHECK(options.chunk_size() >= 1, fn, ": chunk_size must be >= 1, got ",
              options.chunk_size());
  return RuleShape{B, Hqk, Hv, T, Dk, Dv};
}

double rule_scale(const GatedDeltaRuleOptions& options, int64_t Dk) {
  return options.scale().has_value() ? *options.scale() : 1.0 / std::sqrt(static_cast<double>(Dk));
}

// q/k head h / G for value head h.
torch::Tensor expand_heads(const torch::Tensor& x, int64_t G) {
  return G == 1 ? x : x.repeat_interleave(G, /*dim=*/1);
}

// Half types run the torch forms in float and are cast back.
torch::ScalarType compute_type(torch::ScalarType t) {
  return (t == torch::kFloat || t == torch::kDouble) ? t : torch::kFloat;
}

enum class Backend { kReference, kFused };

Backend backend_from_env() {
  const char* env = std::getenv("ATTNKIT_BACKEND");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "fused") == 0) return Backend::kFused;
  if (std::strcmp(env, "reference") == 0) return Backend::kReference;
  TORCH_CHECK(false, kRule, ": ATTNKIT_BACKEND must be reference or fused, got '", env, "'");
  return Backend::kFused;
}

template <typename scalar_t>
void run_kernel(Backend backend,
                const torch::Tensor& q,
                const torch::Tensor& k,
                const torch::Tensor& v,
                const torch::Tensor& g,
                const torch::Tensor& beta,
                const torch::Tensor& initial_state,
                torch::Tensor& out,
                torch::Tensor& final_state,
                double scale,
                int64_t chunk_size) {
  kernels::gated_delta::GatedDeltaParams<scalar_t> p;
  p.batch_size = q.size(0);
  p.num_heads_qk = q.size(1);
  p.num_heads_v = v.size(1);
  p.seq_len = q.size(2);
  p.head_dim_qk = q.size(3);
  p.head_dim_v = v.size(3);
  p.chunk_size = chunk_size;
  p.scale = scale;
  p.q = q.data_ptr<scalar_t>();
  p.q_stride_b = q.stride(0), p.q_stride_h = q.stride(1), p.q_stride_t = q.stride(2);
  p.q_stride_d = q.stride(3);
  p.k = k.data_ptr<scalar_t>();
  p.k_stride_b = k.stride(0), p.k_stride_h = k.stride(1), p.k_stride_t = k.stride(2);
  p.k_stride_d = k.stride(3);
  p.v = v.data_ptr<scalar_t>();
  p.v_stride_b = v.stride(0), p.v_stride_h = v.stride(1), p.v_stride_t = v.stride(2);
  p.v_stride_d = v.stride(3);
  p.g = g.data_ptr<scalar_t>();
  p.g_stride_b = g.stride(0), p.g_stride_h = g.stride(1), p.g_stride_t = g.stride(2);
  p.beta = beta.data_ptr<scalar_t>();
  p.beta_stride_b = beta.stride(0), p.beta_stride_h = beta.stride(1);
  p.beta_stride_t = beta.stride(2);
  if (initial_state.defined()) {
    p.maybe_initial_state = initial_state.data_ptr<scalar_t>();
    p.init_stride_b = initial_state.stride(0), p.init_stride_h = initial_state.stride(1);
    p.init_stride_k = initial_state.stride(2), p.init_stride_v = initial_state.stride(3);
  }
  p.out = out.data_ptr<scalar_t>();
  p.out_stride_b = out.stride(0), p.out_stride_h = out.stride(1), p.out_stride_t = out.stride(2);
  p.out_stride_d = out.stride(3);
  p.final_state = final_state.data_ptr<scalar_t>();
  p.final_stride_b = final_state.stride(0), p.final_stride_h = final_state.stride(1);
  p.final_stride_k = final_state.stride(2), p.final_stride_v = final_state.stride(3);
  if (backend == Backend::kFused) {
    kernels::gated_delta::gated_delta_forward_fused(p);
  } else {
    kernels::gated_delta::gated_delta_forward_reference(p);
  }
}

}  // namespace

GatedDeltaRuleOutput gated_delta_rule_recurrent(const torch::Tensor& q,
                                                const torch::Tensor& k,
                                                const torch::Tensor& v,
                                                const torch::Tensor& g,
                                                const torch::Tensor& beta,
                                                const torch::Tensor& initial_state,
                                                const GatedDeltaRuleOptions& options) {
  const RuleShape s =
      check_rule_inputs("gated_delta_rule_recurrent", q, k, v, g, beta, initial_state, options);
  const auto dtype = q.scalar_type(), ct = compute_type(dtype);
  const int64_t G = s.Hv / s.Hqk;
  torch::Tensor qe = expand_heads(q.to(ct), G) * rule_scale(options, s.Dk);  // [B, Hv, T, dk]
  torch::Tensor ke = expand_heads(k.to(ct), G);
  torch::Tensor ve = v.to(ct), decay = g.to(ct).exp(), be = beta.to(ct);
  torch::Tensor S = initial_state.defined()
                        ? initial_state.to(ct)
                        : torch::zeros({s.B, s.Hv, s.Dk, s.Dv}, q.options().dtype(ct));
  // Per-token slices by unbind: one backward node instead of T selects.
  std::vector<torch::Tensor> q_t = qe.unbind(2), k_t = ke.unbind(2), v_t = ve.unbind(2);
  std::vector<torch::Tensor> decay_t = decay.unbind(2), beta_t = be.unbind(2);
  std::vector<torch::Tensor> outs;
  outs.reserve(s.T);
  for (int64_t t = 0; t < s.T; ++t) {
    S = S * decay_t[t].unsqueeze(-1).unsqueeze(-1);            // S <- exp(g_t) S
    torch::Tensor kt = k_t[t].unsqueeze(-2);                   // [B, Hv, 1, dk]
    torch::Tensor u = beta_t[t].unsqueeze(-1).unsqueeze(-1) *  // [B, Hv, 1, dv]
                      (v_t[t].unsqueeze(-2) - kt.matmul(S));
    S = S + kt.transpose(-1, -2).matmul(u);          // S <- S + k u^T
    outs.push_back(q_t[t].unsqueeze(-2).matmul(S));  // o_t = S^T q_t
  }
  torch::Tensor out =
      s.T > 0 ? torch::cat(outs, 2) : torch::zeros({s.B, s.Hv, 0, s.Dv}, q.options().dtype(ct));
  return {out.to(dtype), S.to(dtype)};
}

GatedDeltaRuleOutput gated_delta_rule_chunked(const torch::Tensor& q,
                                              const torch::Tensor& k,
                                              const torch::Tensor& v,
                                              const torch::Tensor& g,
                                              const torch::Tensor& beta,
                                              const torch::Tensor& initial_state,
                                              const GatedDeltaRuleOptions& options) {
  const RuleShape s =
      check_rule_inputs("gated_delta_rule_chunked", q, k, v, g, beta, initial_state, options);
  const auto dtype = q.scalar_type(), ct = compute_type(dtype);
  const auto opts = q.options().dtype(ct);
  torch::Tensor S =
      initial_state.defined() ? initial_state.to(ct) : torch::zeros({s.B, s.Hv, s.Dk, s.Dv}, opts);
  if (s.T == 0) return {torch::zeros({s.B, s.Hv, 0, s.Dv}, q.options()), S.to(dtype)};
  const int64_t G = s.Hv / s.Hqk;
  const int64_t C = std::min(options.chunk_size(), s.T);
  const int64_t N = (s.T + C - 1) / C, pad = N * C - s.T;
  // Zero padding of the tail is exact: a padded token has k = v = q = 0, beta = 0 and g = 0, so
  // it neither changes the state nor the earlier outputs (A is strictly lower triangular).
  auto pad4 = [&](const torch::Tensor& x) {
    return pad == 0 ? x : torch::constant_pad_nd(x, {0, 0, 0, pad});
  };
  auto pad3 = [&](const torch::Tensor& x) {
    return pad == 0 ? x : torch::constant_pad_nd(x, {0, pad});
  };
  auto chunks = [&](const torch::Tensor& x) {  // [B, H, N*C, d] -> [B, H, N, C, d]
    return x.reshape({s.B, s.Hv, N, C, x.size(-1)});
  };
  torch::Tensor qc = chunks(pad4(expand_heads(q.to(ct), G) * rule_scale(options, s.Dk)));
  torch::Tensor kc = chunks(pad4(expand_heads(k.to(ct), G)));
  torch::Tensor vc = chunks(pad4(v.to(ct)));
  torch::Tensor bc = pad3(beta.to(ct)).reshape({s.B, s.Hv, N, C, 1});
  torch::Tensor gam = pad3(g.to(ct)).reshape({s.B, s.Hv, N, C}).cumsum(-1);  // gamma

  auto bool_opts = torch::TensorOptions().dtype(torch::kBool).device(q.device());
  torch::Tensor lower = torch::ones({C, C}, bool_opts).tril();     // s <= t
  torch::Tensor strict = torch::ones({C, C}, bool_opts).tril(-1);  // s < t
  // exp(gamma_t - gamma_s) on and below the diagonal, 0 above (masked before exp: no overflow).
  torch::Tensor decay = (gam.unsqueeze(-1) - gam.unsqueeze(-2))
                            .masked_fill(lower.logical_not(),
                                         -std::numeric_limits<double>::infinity())
                            .exp();  // [B, Hv, N, C, C]
  torch::Tensor A =
      (bc * kc.matmul(kc.transpose(-1, -2)) * decay).masked_fill(strict.logical_not(), 0.0);
  torch::Tensor eye = torch::eye(C, opts);
  // [W | U'] = T [beta exp(gamma) K | beta V] with T = (I + A)^-1: a forward substitution
  // (unit lower triangular solve), batched over (B, Hv, N).
  torch::Tensor gexp = gam.exp().unsqueeze(-1);  // [B, Hv, N, C, 1]
  torch::Tensor rhs = torch::cat({bc * gexp * kc, bc * vc}, -1);
  torch::Tensor wu = torch::linalg_solve_triangular(eye + A, rhs, /*upper=*/false, /*left=*/true,
                                                    /*unitriangular=*/true);
  torch::Tensor W = wu.narrow(-1, 0, s.Dk), U0 = wu.narrow(-1, s.Dk, s.Dv);
  torch::Tensor qk = qc.matmul(kc.transpose(-1, -2)) * decay;  // [B, Hv, N, C, C]
  torch::Tensor q_decayed = qc * gexp;
  torch::Tensor last = gam.select(-1, C - 1);                                    // [B, Hv, N]
  torch::Tensor k_to_end = kc * (last.unsqueeze(-1) - gam).exp().unsqueeze(-1);  // [.., C, dk]
  torch::Tensor last_exp = last.exp().unsqueeze(-1).unsqueeze(-1);               // [B, Hv, N, 1, 1]

  // The inter-chunk recurrence of the state. Slices come from unbind (one backward node that
  // stacks the gradients) rather than N selects (each of which would scatter into a full-size
  // zero tensor in the backward: O(N^2) memory traffic).
  std::vector<torch::Tensor> u0_n = U0.unbind(2), w_n = W.unbind(2), q_n = q_decayed.unbind(2);
  std::vector<torch::Tensor> qk_n = qk.unbind(2), k_n = k_to_end.unbind(2);
  std::vector<torch::Tensor> last_n = last_exp.unbind(2);
  std::vector<torch::Tensor> outs;
  outs.reserve(N);
  for (int64_t n = 0; n < N; ++n) {
    torch::Tensor U = u0_n[n] - w_n[n].matmul(S);  // [B, Hv, C, dv]
    outs.push_back(q_n[n].matmul(S) + qk_n[n].matmul(U));
    S = last_n[n] * S + k_n[n].transpose(-1, -2).matmul(U);
  }
  torch::Tensor out = torch::cat(outs, 2).narrow(2, 0, s.T);
  return {out.to(dtype), S.to(dtype)};
}

GatedDeltaRuleOutput gated_delta_rule(const torch::Tensor& q,
                                      const torch::Tensor& k,
                                      const torch::Tensor& v,
                                      const torch::Tensor& g,
                                      const torch::Tensor& beta,
                                      const torch::Tensor& initial_state,
                                      const GatedDeltaRuleOptions& options) {
  const RuleShape s = check_rule_inputs(kRule, q, k, v, g, beta, initial_state, options);
  const Backend backend = backend_from_env();
  bool needs_graph = false;
  if (torch::GradMode::is_enabled()) {
    for (const torch::Tensor* t : {&q, &k, &v, &g, &beta, &initial_state}) {
      needs_graph |= t->defined() && t->requires_grad();
    }
  }
  const auto dtype = q.scalar_type();
  if (needs_graph || (dtype != torch::kFloat && dtype != torch::kDouble) || !q.device().is_cpu()) {
    return gated_delta_rule_chunked(q, k, v, g, beta, initial_state, options);
  }
  // The kernels read every input through its strides (the module passes transposed views).
  torch::NoGradGuard no_grad;
  torch::Tensor out = torch::empty({s.B, s.Hv, s.T, s.Dv}, q.options());
  torch::Tensor final_state = torch::empty({s.B, s.Hv, s.Dk, s.Dv}, q.options());
  const double scale = rule_scale(options, s.Dk);
  AT_DISPATCH_FLOATING_TYPES(dtype, "gated_delta_rule", [&] {
    run_kernel<scalar_t>(backend, q, k, v, g, beta, initial_state, out, final_state, scale,
                         options.chunk_size());
  });
  return {out, final_state};
}

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

AttentionOutput GatedDeltaNetImpl::forward_with_aux(const torch::Tensor& x) {
  return run(x, torch::Tensor(), nullptr, /*need_weights=*/true);
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
