#pragma once
// Op layer of the gated delta rule: validation, allocation, dtype dispatch and the
// GatedDeltaParams the kernels see. Internal to the library.

#include <attnkit/functional/gated_delta_rule.h>

namespace attnkit {
namespace ops {

struct GatedDeltaShape {
  int64_t B, Hqk, Hv, T, Dk, Dv;
};

/// Validates the rule's inputs once; `fn` names the caller in messages.
GatedDeltaShape check_gated_delta_inputs(const char* fn,
                                         const torch::Tensor& q,
                                         const torch::Tensor& k,
                                         const torch::Tensor& v,
                                         const torch::Tensor& g,
                                         const torch::Tensor& beta,
                                         const torch::Tensor& initial_state,
                                         const GatedDeltaRuleOptions& options);

/// Whether the fused kernel handles these inputs (float or double, on the CPU).
bool gated_delta_fused_supported(const torch::Tensor& q);

/// The fused forward (no autograd): the kernels read every input through its strides, and the
/// ISA path follows ATTNKIT_CPU_CAPABILITY (the scalar reference kernel for `reference`).
GatedDeltaRuleOutput gated_delta_rule_forward(const torch::Tensor& q,
                                              const torch::Tensor& k,
                                              const torch::Tensor& v,
                                              const torch::Tensor& g,
                                              const torch::Tensor& beta,
                                              const torch::Tensor& initial_state,
                                              double scale,
                                              int64_t chunk_size);

}  // namespace ops
}  // namespace attnkit
