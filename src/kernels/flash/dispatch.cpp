// Run-time ISA choice of the flash kernels (kernels/cpu/capability.h).

#include "kernels/flash/kernel.h"

namespace attnkit {
namespace kernels {
namespace flash {

void flash_forward(const FlashParams& params) {
  switch (selected_capability()) {
    case CpuCapability::kAvx512:
      return avx512::flash_forward(params);
    case CpuCapability::kAvx2:
      return avx2::flash_forward(params);
    case CpuCapability::kReference:
      return flash_forward_reference(params);
  }
}

void flash_backward(const FlashParams& params, const FlashBackwardParams& grads) {
  switch (selected_capability()) {
    case CpuCapability::kAvx512:
      return avx512::flash_backward(params, grads);
    case CpuCapability::kAvx2:
      return avx2::flash_backward(params, grads);
    case CpuCapability::kReference:
      return flash_backward_reference(params, grads);
  }
}

}  // namespace flash
}  // namespace kernels
}  // namespace attnkit
