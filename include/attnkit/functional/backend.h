#pragma once
// The backend switch shared by every kernel family (docs/backends.md): ATTNKIT_BACKEND=fused
// (the default) runs the fused CPU kernels where they apply, ATTNKIT_BACKEND=reference runs the
// composed torch-op reference of each functional. The instruction set of the fused kernels is a
// second, independent switch (ATTNKIT_CPU_CAPABILITY=reference|avx2|avx512).

namespace attnkit {
namespace functional {

/// True when ATTNKIT_BACKEND selects the fused kernels (unset or "fused"), false for
/// "reference"; any other value raises a c10::Error. Read at every call.
bool fused_backend_selected();

}  // namespace functional
}  // namespace attnkit
