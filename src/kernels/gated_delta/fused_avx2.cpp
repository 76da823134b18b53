// The fused gated delta rule body (fused_impl.h) compiled for AVX2 + FMA. Every header is included
// before the target pragma, so only this file's own (internal-linkage) code uses the wider
// instructions; fused.cpp calls it only when CPUID reports the extension.

#include "kernels/gated_delta/params.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define ATTNKIT_GATED_DELTA_ISA 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace attnkit {
namespace kernels {
namespace gated_delta {

namespace {
#include "kernels/gated_delta/fused_impl.h"
}  // namespace

template <typename T>
void forward_heads_avx2(const GatedDeltaParams<T>& p, int64_t begin, int64_t end, T* scratch) {
  forward_heads(p, begin, end, scratch);
}

template void forward_heads_avx2<float>(const GatedDeltaParams<float>&, int64_t, int64_t, float*);
template void forward_heads_avx2<double>(const GatedDeltaParams<double>&,
                                         int64_t,
                                         int64_t,
                                         double*);

}  // namespace gated_delta
}  // namespace kernels
}  // namespace attnkit

#ifdef ATTNKIT_GATED_DELTA_ISA
#pragma GCC pop_options
#endif
