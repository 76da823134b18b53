// AVX-512 path of the flash kernels (compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl
// -mfma via set_source_files_properties; nothing else in the library is).

#include "kernels/flash/common.h"
#include "kernels/flash/kernel.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <immintrin.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <vector>

namespace attnkit {
namespace kernels {
namespace flash {
namespace avx512 {
namespace {

#include "kernels/cpu/vec_avx512.h"

#include "kernels/flash/forward_impl.h"
// The backward uses the forward's helpers: keep it second.
#include "kernels/flash/backward_impl.h"

}  // namespace

void flash_forward(const FlashParams& params) { forward_impl(params); }

void flash_backward(const FlashParams& params, const FlashBackwardParams& grads) {
  backward_impl(params, grads);
}

}  // namespace avx512
}  // namespace flash
}  // namespace kernels
}  // namespace attnkit
