#include <attnkit/core/threading.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace attnkit {
namespace {

// Restores torch's thread count when a test ends.
struct ThreadCountGuard {
  int saved = torch::get_num_threads();
  ~ThreadCountGuard() { torch::set_num_threads(saved); }
};

TEST(Threading, OneOpenMpRuntimeServesTorchAndTheKernels) {
  // Run a parallel region on each side so both runtimes (if there were two) are loaded.
  torch::mm(torch::randn({256, 256}), torch::randn({256, 256}));
  kernel_threads();
  const std::vector<std::string> runtimes = openmp_runtimes();
  ASSERT_EQ(runtimes.size(), 1u) << "expected exactly one OpenMP runtime, found "
                                 << ::testing::PrintToString(runtimes);
}

TEST(Threading, SetNumThreadsGovernsTheKernels) {
  ThreadCountGuard guard;
  torch::set_num_threads(1);
  EXPECT_EQ(kernel_threads(), 1);
  torch::set_num_threads(2);
  EXPECT_EQ(kernel_threads(), 2) << "torch::set_num_threads(2) did not reach attnkit's kernels";
  torch::set_num_threads(1);
  EXPECT_EQ(kernel_threads(), 1);
}

}  // namespace
}  // namespace attnkit
