#pragma once
// Which BLAS LibTorch's matmul actually runs on. The pip wheel's LibTorch carries MKL inside
// libtorch_cpu.so (at::show_config(): BLAS_INFO=mkl); Debian's LibTorch links libblas.so.3,
// which the alternatives system points at OpenBLAS or at the reference BLAS (~40x slower).

#include <string>

namespace attnkit::cli {

/// The BLAS behind LibTorch's matmul, for a summary line: "MKL <version> in <file>" when
/// LibTorch is built with MKL; else the path of the libblas/libopenblas mapped into this process
/// (from /proc/self/maps); "" when neither is found.
std::string mapped_blas_library();

/// A one-line warning when LibTorch's matmul runs on Debian's reference BLAS, else "". Never
/// warns for a LibTorch built with MKL: its matmul does not go through any libblas mapped.
std::string blas_warning();

}  // namespace attnkit::cli
