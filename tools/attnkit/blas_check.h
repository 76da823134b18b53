#pragma once
// Which BLAS LibTorch's matmul actually runs on. Debian's LibTorch links libblas.so.3, which the
// alternatives system points at OpenBLAS or at the reference BLAS (~40x slower matmul).

#include <string>

namespace attnkit::cli {

/// The path of the libblas/libopenblas mapped into this process (from /proc/self/maps), or ""
/// when none is (a LibTorch built with MKL, or no /proc).
std::string mapped_blas_library();

/// A one-line warning when the mapped BLAS is Debian's reference BLAS, else "".
std::string blas_warning();

}  // namespace attnkit::cli
