#pragma once
// How attnkit's fused kernels are threaded. They split work with at::parallel_for, compiled into
// the library, so they run on whichever OpenMP runtime the library is linked with. The build links
// LibTorch's own (the libgomp that ships beside libtorch), which makes torch::set_num_threads
// govern the kernels too and keeps a single thread pool in the process.

#include <cstdint>
#include <string>
#include <vector>

namespace attnkit {

/// The number of threads a parallel region inside the library runs on now: the fused kernels'
/// thread count. Equals torch::get_num_threads() when the OpenMP runtime is shared.
int64_t kernel_threads();

/// The files of the OpenMP runtimes mapped into this process (libgomp, libiomp5, libomp), read
/// from /proc/self/maps; one entry when attnkit and LibTorch share their runtime. Empty where
/// /proc is unavailable.
std::vector<std::string> openmp_runtimes();

}  // namespace attnkit
