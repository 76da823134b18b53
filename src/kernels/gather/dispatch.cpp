// Run-time ISA choice of the gather kernels: the same choice (and override) as the flash family.

#include "kernels/cpu/capability.h"
#include "kernels/gather/params.h"

namespace attnkit {
namespace kernels {
namespace gather {

void gather_forward(const GatherParams& p) {
  switch (selected_capability()) {
    case CpuCapability::kAvx512:
      return avx512::gather_forward(p);
    case CpuCapability::kAvx2:
      return avx2::gather_forward(p);
    case CpuCapability::kReference:
      return gather_forward_reference(p);
  }
}

void gather_backward(const GatherParams& p, const GatherBackwardParams& g) {
  switch (selected_capability()) {
    case CpuCapability::kAvx512:
      return avx512::gather_backward(p, g);
    case CpuCapability::kAvx2:
      return avx2::gather_backward(p, g);
    case CpuCapability::kReference:
      return gather_backward_reference(p, g);
  }
}

}  // namespace gather
}  // namespace kernels
}  // namespace attnkit
