#pragma once
// Helpers shared by the tests of include/attnkit/sparse/: literal tensors, exact comparison,
// error messages, and random q/k/v of an attention call.

#include <attnkit/sparse/mask.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace attnkit {
namespace sparse {
namespace test_util {

inline torch::Tensor f32(std::vector<float> v, torch::IntArrayRef shape) {
  return torch::tensor(v, torch::kFloat).reshape(shape);
}

inline torch::Tensor i64(std::vector<int64_t> v) { return torch::tensor(v, torch::kLong); }

inline torch::Tensor i64(std::vector<int64_t> v, torch::IntArrayRef shape) {
  return torch::tensor(v, torch::kLong).reshape(shape);
}

/// Same shape, dtype and values.
inline void expect_equal(const torch::Tensor& got, const torch::Tensor& want) {
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(got.sizes(), want.sizes());
  EXPECT_EQ(got.scalar_type(), want.scalar_type());
  EXPECT_TRUE(got.sizes() == want.sizes() && torch::equal(got, want))
      << "got\n" << got << "\nwant\n" << want;
}

/// The message of the c10::Error `fn` throws ("" and a failure if it does not throw).
template <typename F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "expected a c10::Error";
  return "";
}

/// The tensors of one attention call.
struct Qkv {
  torch::Tensor q, k, v;
};

/// q [B, H, Tq, D], k and v [B, Hkv, Tk, D] from torch::randn after torch::manual_seed(seed),
/// drawn in float32 and converted to dtype.
inline Qkv random_qkv(int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D,
                      uint64_t seed = 0, torch::Dtype dtype = torch::kFloat) {
  torch::manual_seed(seed);
  return {torch::randn({B, H, Tq, D}).to(dtype), torch::randn({B, Hkv, Tk, D}).to(dtype),
          torch::randn({B, Hkv, Tk, D}).to(dtype)};
}

/// The EMPTY mask of x's call: [B, H, Tq, Tk].
inline Mask empty_for(const Qkv& x, torch::Dtype dtype = torch::kFloat) {
  return Mask::empty({x.q.size(0), x.q.size(1), x.q.size(2), x.k.size(2)}, dtype);
}

}  // namespace test_util
}  // namespace sparse
}  // namespace attnkit
