#pragma once
// Entry points of the fused attention kernel family. The op layer fills a FlashParams and calls
// flash_forward / flash_backward, which pick an ISA path at run time (dispatch.cpp).

#include "kernels/cpu/capability.h"
#include "kernels/flash/params.h"

namespace attnkit {
namespace kernels {
namespace flash {

/// out, lse <- attention(q, k, v) on the selected ISA path.
void flash_forward(const FlashParams& params);
/// dq, dk, dv (+ dsinks, dbias) <- backward of flash_forward, recomputing P from params.lse.
void flash_backward(const FlashParams& params, const FlashBackwardParams& grads);

// Per-ISA implementations (one translation unit each).
void flash_forward_reference(const FlashParams& params);
void flash_backward_reference(const FlashParams& params, const FlashBackwardParams& grads);
namespace avx2 {
void flash_forward(const FlashParams& params);
void flash_backward(const FlashParams& params, const FlashBackwardParams& grads);
}  // namespace avx2
namespace avx512 {
void flash_forward(const FlashParams& params);
void flash_backward(const FlashParams& params, const FlashBackwardParams& grads);
}  // namespace avx512

}  // namespace flash
}  // namespace kernels
}  // namespace attnkit
