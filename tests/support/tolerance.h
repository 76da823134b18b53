#pragma once
// Tolerances of the kernel tests, defined once per dtype. Comparisons are against the reference
// evaluated in float64 on the same (rounded) inputs.

#include <gtest/gtest.h>
#include <torch/types.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

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

/// Machine epsilon of a floating dtype.
inline double epsilon_of(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kDouble:
      return std::numeric_limits<double>::epsilon();
    case torch::kBFloat16:
      return 0.0078125;  // 2^-7
    case torch::kHalf:
      return 0.0009765625;  // 2^-10
    default:
      return std::numeric_limits<float>::epsilon();
  }
}

/// The bound for two computations of the same quantity that differ only in the order of their
/// operations (another kernel, BLAS path or CPU): 64 units in the last place of the coarser of
/// the two dtypes, scaled by the magnitude of the expected values (at least 1). float32 against
/// anything: 7.6e-6 for O(1) values.
inline double close_bound(const torch::Tensor& actual, const torch::Tensor& expected) {
  const double eps =
      std::max(epsilon_of(actual.scalar_type()), epsilon_of(expected.scalar_type()));
  const double magnitude = expected.numel() > 0 ? expected.abs().max().item<double>() : 0.0;
  return 64 * eps * std::max(1.0, magnitude);
}

/// Passes when max |actual - expected| <= close_bound(actual, expected).
inline ::testing::AssertionResult close(const torch::Tensor& actual, const torch::Tensor& expected) {
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shapes differ: " << actual.sizes() << " vs "
                                         << expected.sizes();
  }
  const double bound = close_bound(actual, expected);
  const double diff = actual.numel() > 0
                          ? (actual.to(torch::kDouble) - expected.to(torch::kDouble))
                                .abs()
                                .max()
                                .item<double>()
                          : 0.0;
  if (diff <= bound) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |difference| " << diff << " > bound " << bound;
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
