#pragma once
// The gated delta rule (Yang, Kautz & Hatamizadeh, 2025), the recurrence inside Gated DeltaNet,
// in three forms that agree:
//   gated_delta_rule_recurrent  the plain recurrence, one token at a time (the reference);
//   gated_delta_rule_chunked    the chunked WY/UT form in torch ops (autograd gives the backward);
//   gated_delta_rule            the chunked form by the fastest path: the torch ops when a
//                               gradient is needed, else the fused CPU kernel.

#include <torch/arg.h>
#include <torch/types.h>

#include <optional>

namespace attnkit {

/// Options of the gated delta rule functions.
/// Example:
///   auto r = gated_delta_rule_chunked(q, k, v, g, beta, {}, GatedDeltaRuleOptions().scale(1.0));
struct GatedDeltaRuleOptions {
  /// Factor on q; unset means head_qk_dim^-1/2. Default: nullopt
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  /// Tokens per chunk of the chunked form (a shorter sequence is one chunk; a length that is not
  /// a multiple is zero-padded, which is exact). Default: 64
  TORCH_ARG(int64_t, chunk_size) = 64;
};

/// What the gated delta rule returns.
struct GatedDeltaRuleOutput {
  /// [B, Hv, T, dv]
  torch::Tensor output;
  /// The state after the last token, [B, Hv, dk, dv] (continue with it as initial_state).
  torch::Tensor final_state;
};

/// The gated delta rule as the plain recurrence over t (the reference of the other forms).
/// Per batch and value head h, reading q/k head h / (Hv / Hqk), from S = initial_state (or 0):
///   S <- exp(g_t) S;  u_t = beta_t (v_t - S^T k_t);  S <- S + k_t u_t^T;  o_t = S^T (scale q_t)
///   q, k: [B, Hqk, T, dk]   v: [B, Hv, T, dv]   g (log decay, <= 0), beta: [B, Hv, T]
///   initial_state: [B, Hv, dk, dv] or undefined (zeros)
/// Hv must be a multiple of Hqk. q and k are used as given (the module L2-normalises them).
GatedDeltaRuleOutput gated_delta_rule_recurrent(const torch::Tensor& q,
                                                const torch::Tensor& k,
                                                const torch::Tensor& v,
                                                const torch::Tensor& g,
                                                const torch::Tensor& beta,
                                                const torch::Tensor& initial_state = {},
                                                const GatedDeltaRuleOptions& options = {});

/// The same rule in the chunked WY/UT form, in torch ops (autograd gives the backward). Within a
/// chunk of C tokens, with gamma_t = sum_{s<=t} g_s (cumulative inside the chunk), K, V, Q the
/// chunk's rows and S0 the state entering it:
///   A[t,s] = beta_t exp(gamma_t - gamma_s) k_t.k_s  for s < t (strictly lower), else 0
///   T = (I + A)^-1  (unit lower triangular: a forward substitution)
///   W = T diag(beta exp(gamma)) K,   U = T diag(beta) V - W S0
///   O = diag(exp(gamma)) Q S0 + ((Q K^T) * exp(gamma_t - gamma_s) [s <= t]) U
///   S1 = exp(gamma_C) S0 + (K * exp(gamma_C - gamma))^T U
/// Every exponent is <= 0, so nothing overflows however strong the decay. Shapes and meaning as
/// in gated_delta_rule_recurrent; the result equals it up to rounding.
GatedDeltaRuleOutput gated_delta_rule_chunked(const torch::Tensor& q,
                                              const torch::Tensor& k,
                                              const torch::Tensor& v,
                                              const torch::Tensor& g,
                                              const torch::Tensor& beta,
                                              const torch::Tensor& initial_state = {},
                                              const GatedDeltaRuleOptions& options = {});

/// The chunked rule by the fastest available path: gated_delta_rule_chunked when autograd needs
/// a graph (grad mode on and an input requiring grad), the dtype is not float/double, the
/// tensors are not on the CPU, or ATTNKIT_BACKEND=reference; else the fused CPU kernel
/// (parallel over (batch, head); its ISA path follows ATTNKIT_CPU_CAPABILITY, see
/// docs/backends.md). Same shapes as gated_delta_rule_recurrent. Example:
///   auto [o, s] = gated_delta_rule(q, k, v, g, beta);             // o: [B, Hv, T, dv]
///   auto next = gated_delta_rule(q2, k2, v2, g2, beta2, s);       // continues the sequence
GatedDeltaRuleOutput gated_delta_rule(const torch::Tensor& q,
                                      const torch::Tensor& k,
                                      const torch::Tensor& v,
                                      const torch::Tensor& g,
                                      const torch::Tensor& beta,
                                      const torch::Tensor& initial_state = {},
                                      const GatedDeltaRuleOptions& options = {});

}  // namespace attnkit
