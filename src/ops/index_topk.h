#pragma once
// Op layer of index_topk: validation, allocation and the IndexTopkParams the kernels see.
// Internal to the library.

#include <attnkit/functional/index_topk.h>

namespace attnkit {
namespace ops {

/// Validates q, k, w and options once; `fn` names the caller in messages.
void check_index_inputs(const char* fn,
                        const torch::Tensor& q,
                        const torch::Tensor& k,
                        const torch::Tensor& w,
                        const functional::IndexTopkOptions& o);

/// Whether the fused kernels handle this dtype/device (fp32, bf16 on CPU).
bool index_topk_fused_supported(const torch::Tensor& q);

/// The fused selection (not differentiable). Inputs already validated.
torch::Tensor index_topk_fused(const torch::Tensor& q,
                               const torch::Tensor& k,
                               const torch::Tensor& w,
                               const functional::IndexTopkOptions& o);

}  // namespace ops
}  // namespace attnkit
