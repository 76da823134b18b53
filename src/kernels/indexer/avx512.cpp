// AVX-512 path of the index top-k kernel (compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl
// -mfma via set_source_files_properties).

#include "kernels/indexer/select.h"

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <vector>

namespace attnkit {
namespace kernels {
namespace indexer {
namespace avx512 {
namespace {

#include "kernels/cpu/vec_avx512.h"

#include "kernels/indexer/forward_impl.h"

}  // namespace

void index_topk(const IndexTopkParams& params) { index_topk_impl(params); }

}  // namespace avx512
}  // namespace indexer
}  // namespace kernels
}  // namespace attnkit
