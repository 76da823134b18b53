#pragma once
// Op layer of gather_attention: validation, allocation, the kernels' params, and autograd.
// Internal to the library.

#include <attnkit/functional/gather_attention.h>

namespace attnkit {
namespace ops {

/// Validates q, k, v, indices, weights and options once; `fn` names the caller in messages.
void check_gather_inputs(const char* fn,
                         const torch::Tensor& q,
                         const torch::Tensor& k,
                         const torch::Tensor& v,
                         const torch::Tensor& indices,
                         const torch::Tensor& weights,
                         const functional::GatherAttentionOptions& o);

/// Whether the fused kernels handle this dtype/device (fp32, bf16 on CPU).
bool gather_fused_supported(const torch::Tensor& q);

/// The fused forward, differentiable through an autograd Function whose backward is the fused
/// gather backward. Inputs already validated.
functional::GatherAttentionResult gather_attention_fused(
    const torch::Tensor& q,
    const torch::Tensor& k,
    const torch::Tensor& v,
    const torch::Tensor& indices,
    const torch::Tensor& weights,
    const functional::GatherAttentionOptions& o);

}  // namespace ops
}  // namespace attnkit
