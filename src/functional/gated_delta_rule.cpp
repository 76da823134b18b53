// The gated delta rule in torch ops (recurrent and chunked forms) and the dispatcher that picks
// the fused kernel (ops/gated_delta_rule.h) when no gradient is needed.

#include <attnkit/functional/gated_delta_rule.h>

#include <attnkit/functional/backend.h>

#include <torch/torch.h>

#include "ops/gated_delta_rule.h"

#include <cmath>
#include <limits>
#include <vector>

namespace attnkit {

namespace {

constexpr const char* kRule = "gated_delta_rule";

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

}  // namespace

GatedDeltaRuleOutput gated_delta_rule_recurrent(const torch::Tensor& q,
                                                const torch::Tensor& k,
                                                const torch::Tensor& v,
                                                const torch::Tensor& g,
                                                const torch::Tensor& beta,
                                                const torch::Tensor& initial_state,
                                                const GatedDeltaRuleOptions& options) {
  const ops::GatedDeltaShape s =
      ops::check_gated_delta_inputs("gated_delta_rule_recurrent", q, k, v, g, beta, initial_state,
                                    options);
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
  const ops::GatedDeltaShape s =
      ops::check_gated_delta_inputs("gated_delta_rule_chunked", q, k, v, g, beta, initial_state,
                                    options);
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
  const ops::GatedDeltaShape s =
      ops::check_gated_delta_inputs(kRule, q, k, v, g, beta, initial_state, options);
  bool needs_graph = false;
  if (torch::GradMode::is_enabled()) {
    for (const torch::Tensor* t : {&q, &k, &v, &g, &beta, &initial_state}) {
      needs_graph |= t->defined() && t->requires_grad();
    }
  }
  // The fused kernel has no backward: autograd takes the chunked torch form.
  if (needs_graph || !functional::fused_backend_selected() ||
      !ops::gated_delta_fused_supported(q)) {
    return gated_delta_rule_chunked(q, k, v, g, beta, initial_state, options);
  }
  return ops::gated_delta_rule_forward(q, k, v, g, beta, initial_state, rule_scale(options, s.Dk),
                                       options.chunk_size());
}

}  // namespace attnkit
