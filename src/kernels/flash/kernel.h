#pragma once
// Entry points of the fused attention kernel family. The op layer fills a FlashParams and calls
// flash_forward / flash_backward, which pick an ISA path at run time (dispatch.cpp).

#include "kernels/flash/params.h"

#include <string>

namespace attnkit {
namespace kernels {
namespace flash {

enum class CpuCapability { kReference, kAvx2, kAvx512 };

/// The ISA path used by the next call: ATTNKIT_CPU_CAPABILITY=reference|avx2|avx512 if set
/// (capped at what the CPU supports), else the best the CPU supports. Read at every call so
/// tests can force each path in turn.
CpuCapability selected_capability();
/// "reference", "avx2" or "avx512".
std::string capability_name(CpuCapability capability);
/// Whether this CPU can run `capability`.
bool cpu_supports(CpuCapability capability);

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
