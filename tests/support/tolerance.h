#pragma once
// Tolerances of the kernel tests, defined once per dtype. Comparisons are against the reference
// evaluated in float64 on the same (rounded) inputs.

#include <torch/types.h>

namespace attnkit {
namespace testing {

struct Tolerance {
  double atol;
  double rtol;
};

/// fp32 in, fp32 accumulation: the 1e-5.
constexpr Tolerance kFloat32Tolerance{1e-5, 1e-5};
/// bf16 in and out (8-bit mantissa, output rounding ~2^-9 relative), fp32 accumulation.
constexpr Tolerance kBFloat16Tolerance{1e-2, 1e-2};

inline Tolerance tolerance_for(torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 ? kBFloat16Tolerance : kFloat32Tolerance;
}

/// Sets an environment variable for the lifetime of the guard.
class EnvGuard {
 public:
  EnvGuard(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_old_ = old != nullptr;
    if (had_old_) old_ = old;
    setenv(name, value, 1);
  }
  ~EnvGuard() {
    if (had_old_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

 private:
  const char* name_;
  bool had_old_ = false;
  std::string old_;
};

/// The ISA paths the tests force in turn (ATTNKIT_CPU_CAPABILITY).
inline std::vector<const char*> isa_paths() { return {"reference", "avx2", "avx512"}; }

}  // namespace testing
}  // namespace attnkit
