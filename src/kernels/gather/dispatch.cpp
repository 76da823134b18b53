// Run-time ISA choice of the gather kernels: the same choice (and override) as the flash family.

#include "kernels/flash/kernel.h"
#include "kernels/gather/params.h"

namespace attnkit {
namespace kernels {
namespace gather {

void gather_forward(const GatherParams& p) {
  switch (flash::selected_capability()) {
    case flash::CpuCapability::kAvx512:
      return avx512::gather_forward(p);
    case flash::CpuCapability::kAvx2:
      return avx2::gather_forward(p);
    case flash::CpuCapability::kReference:
      return gather_forward_reference(p);
  }
}

void gather_backward(const GatherParams& p, const GatherBackwardParams& g) {
  switch (flash::selected_capability()) {
    case flash::CpuCapability::kAvx512:
      return avx512::gather_backward(p, g);
    case flash::CpuCapability::kAvx2:
      return avx2::gather_backward(p, g);
    case flash::CpuCapability::kReference:
      return gather_backward_reference(p, g);
  }
}

}  // namespace gather
}  // namespace kernels
}  // namespace attnkit
