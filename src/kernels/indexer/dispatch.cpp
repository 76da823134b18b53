// Run-time ISA choice of the index top-k kernels: the same choice (and override) as the flash
// family.

#include "kernels/cpu/capability.h"
#include "kernels/indexer/params.h"

namespace attnkit {
namespace kernels {
namespace indexer {

void index_topk(const IndexTopkParams& p) {
  switch (selected_capability()) {
    case CpuCapability::kAvx512:
      return avx512::index_topk(p);
    case CpuCapability::kAvx2:
      return avx2::index_topk(p);
    case CpuCapability::kReference:
      return index_topk_reference(p);
  }
}

}  // namespace indexer
}  // namespace kernels
}  // namespace attnkit
