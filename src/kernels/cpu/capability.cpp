// ATTNKIT_CPU_CAPABILITY: the run-time ISA choice of every fused kernel family. CPUID once; the
// environment variable is read at every call so tests can force each path in turn.

#include "kernels/cpu/capability.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace attnkit {
namespace kernels {

namespace {

CpuCapability detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return CpuCapability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuCapability::kAvx2;
  return CpuCapability::kReference;
}

CpuCapability best() {
  static const CpuCapability capability = detect();
  return capability;
}

}  // namespace

bool cpu_supports(CpuCapability capability) {
  return static_cast<int>(capability) <= static_cast<int>(best());
}

CpuCapability selected_capability() {
  const char* env = std::getenv("ATTNKIT_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best();
  CpuCapability wanted;
  if (std::strcmp(env, "reference") == 0) {
    wanted = CpuCapability::kReference;
  } else if (std::strcmp(env, "avx2") == 0) {
    wanted = CpuCapability::kAvx2;
  } else if (std::strcmp(env, "avx512") == 0) {
    wanted = CpuCapability::kAvx512;
  } else {
    TORCH_CHECK(false, "attnkit: ATTNKIT_CPU_CAPABILITY must be reference, avx2 or avx512, got '",
                env, "'");
  }
  // Never run instructions the CPU lacks: cap the request at the best supported path.
  return cpu_supports(wanted) ? wanted : best();
}

}  // namespace kernels
}  // namespace attnkit
