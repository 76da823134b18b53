// AVX2 path of the gather attention kernels (per-file -m flags, see CMakeLists.txt).

#include "kernels/flash/common.h"
#include "kernels/gather/params.h"

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace attnkit {
namespace kernels {
namespace gather {
namespace avx2 {
namespace {

using flash::fill_floats;

#include "kernels/cpu/vec_avx2.h"

#include "kernels/gather/forward_impl.h"
// The backward uses the forward's helpers: keep it second.
#include "kernels/gather/backward_impl.h"

}  // namespace

void gather_forward(const GatherParams& p) { gather_forward_impl(p); }

void gather_backward(const GatherParams& p, const GatherBackwardParams& g) {
  gather_backward_impl(p, g);
}

}  // namespace avx2
}  // namespace gather
}  // namespace kernels
}  // namespace attnkit
