#pragma once
// The instruction-set switch shared by every fused kernel family (flash, gather, indexer, gated
// delta): each family's dispatch asks selected_capability() once per call and runs its scalar
// reference, AVX2 or AVX-512 path. One vocabulary, documented in docs/backends.md.

namespace attnkit {
namespace kernels {

enum class CpuCapability { kReference, kAvx2, kAvx512 };

/// The ISA path used by the next call: ATTNKIT_CPU_CAPABILITY=reference|avx2|avx512 if set
/// (capped at what the CPU supports), else the best the CPU supports. Read at every call so
/// tests can force each path in turn. `reference` is each family's scalar kernel.
CpuCapability selected_capability();
/// Whether this CPU can run `capability`.
bool cpu_supports(CpuCapability capability);

}  // namespace kernels
}  // namespace attnkit
