#pragma once
// Op layer of flex_attention: validation, output and scratch allocation, dtype dispatch and the
// FlashParams the kernels see. Internal to the library.

#include <attnkit/functional/flex_attention.h>

namespace attnkit {
namespace ops {

/// Validates q, k, v and options once; `fn` names the caller in messages.
void check_flex_inputs(const char* fn,
                       const torch::Tensor& q,
                       const torch::Tensor& k,
                       const torch::Tensor& v,
                       const functional::FlexAttentionOptions& options);

/// Whether the fused kernels handle this dtype/device (fp32, bf16 on CPU).
bool fused_supported(const torch::Tensor& q);

/// Fused forward (no autograd): output [B, Hq, Tq, Dv] (q's dtype) and lse [B, Hq, Tq] fp32.
functional::FlexAttentionResult flex_attention_forward(
    const torch::Tensor& q,
    const torch::Tensor& k,
    const torch::Tensor& v,
    const functional::FlexAttentionOptions& options);

/// Gradients of flex_attention_forward, recomputed from lse. Undefined entries for sinks /
/// bias when they are absent or not wanted.
struct FlexAttentionGrads {
  torch::Tensor dq, dk, dv, dsinks, dbias;
};
FlexAttentionGrads flex_attention_backward(const torch::Tensor& dout,
                                           const torch::Tensor& q,
                                           const torch::Tensor& k,
                                           const torch::Tensor& v,
                                           const torch::Tensor& out,
                                           const torch::Tensor& lse,
                                           const functional::FlexAttentionOptions& options,
                                           bool want_dsinks,
                                           bool want_dbias);

}  // namespace ops
}  // namespace attnkit
