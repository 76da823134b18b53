#include "ops/gated_delta_rule.h"

#include <torch/torch.h>

#include "kernels/gated_delta/kernel.h"

#include <vector>

namespace attnkit {
namespace ops {

namespace {

template <typename scalar_t>
void run_kernel(const torch::Tensor& q,
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
  kernels::gated_delta::gated_delta_forward_fused(p);
}

}  // namespace

GatedDeltaShape check_gated_delta_inputs(const char* fn,
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
  return GatedDeltaShape{B, Hqk, Hv, T, Dk, Dv};
}

bool gated_delta_fused_supported(const torch::Tensor& q) {
  return q.device().is_cpu() &&
         (q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kDouble);
}

GatedDeltaRuleOutput gated_delta_rule_forward(const torch::Tensor& q,
                                              const torch::Tensor& k,
                                              const torch::Tensor& v,
                                              const torch::Tensor& g,
                                              const torch::Tensor& beta,
                                              const torch::Tensor& initial_state,
                                              double scale,
                                              int64_t chunk_size) {
  torch::NoGradGuard no_grad;
  const int64_t B = q.size(0), Hv = v.size(1), T = q.size(2), Dk = q.size(3), Dv = v.size(3);
  torch::Tensor out = torch::empty({B, Hv, T, Dv}, q.options());
  torch::Tensor final_state = torch::empty({B, Hv, Dk, Dv}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_delta_rule", [&] {
    run_kernel<scalar_t>(q, k, v, g, beta, initial_state, out, final_state, scale, chunk_size);
  });
  return {out, final_state};
}

}  // namespace ops
}  // namespace attnkit
