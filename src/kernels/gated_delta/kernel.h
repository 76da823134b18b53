#pragma once
// Entry points of the gated delta rule kernels. Both compute the chunked WY/UT form of the
// forward (see params.h for the legend and the rule) and write out and final_state.

#include "kernels/gated_delta/params.h"

namespace attnkit {
namespace kernels {
namespace gated_delta {

/// Scalar reference: plain loops, one (batch, head) after the other, building the UT transform
/// T = (I + A)^-1 of each chunk explicitly by forward substitution. The test oracle.
template <typename scalar_t>
void gated_delta_forward_reference(const GatedDeltaParams<scalar_t>& p);

/// Fused kernel: at::parallel_for over (batch, value head); per chunk the forward substitution
/// runs directly on the right-hand sides [beta exp(gamma) K | beta V] (no T matrix), every
/// product is a register-blocked combination of contiguous rows, the state stays in per-thread
/// scratch, and the body is compiled for the baseline, AVX2 and AVX-512 (chosen from CPUID).
template <typename scalar_t>
void gated_delta_forward_fused(const GatedDeltaParams<scalar_t>& p);

}  // namespace gated_delta
}  // namespace kernels
}  // namespace attnkit
