// The set-to-set modules (outside the sequence contract, whose CudaMatchesCpu covers every other
// mechanism) on a CUDA device against the CPU, in float64: forward and backward. Skipped
// without CUDA.

#include <attnkit/attention/causal_jepa_attention.h>
#include <attnkit/attention/slot_attention.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"

namespace attnkit {
namespace {

using testing::max_abs_diff;

constexpr double kBound = 1e-9;

TEST(SetToSetCuda, SlotAttentionMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(0);
  SlotAttention cpu(SlotAttentionOptions(16, 4));
  cpu->to(torch::kDouble);
  auto gpu = std::dynamic_pointer_cast<SlotAttentionImpl>(cpu->clone(torch::Device(torch::kCUDA)));
  torch::Tensor x = torch::randn({2, 9, 16}, torch::kDouble);
  // The initial slots come from the CPU generator on both sides, so the draws are identical.
  torch::Tensor y_cpu = cpu->forward(x, at::detail::createCPUGenerator(5));
  torch::Tensor y_gpu = gpu->forward(x.cuda(), at::detail::createCPUGenerator(5));
  ASSERT_TRUE(y_gpu.is_cuda());
  EXPECT_LT(max_abs_diff(y_gpu.cpu(), y_cpu), kBound);
  y_cpu.sum().backward();
  y_gpu.sum().backward();
  testing::expect_same_grads(*cpu, *gpu, kBound);
}

TEST(SetToSetCuda, CausalJepaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(1);
  CausalJEPAAttention cpu(CausalJEPAAttentionOptions(32, 4, /*num_slots=*/5, /*history_frames=*/3));
  cpu->eval();
  cpu->to(torch::kDouble);
  auto gpu =
      std::dynamic_pointer_cast<CausalJEPAAttentionImpl>(cpu->clone(torch::Device(torch::kCUDA)));
  torch::Tensor slots = torch::randn({2, 3, 5, 32}, torch::kDouble);
  torch::Tensor hidden = torch::tensor({1, 3}, torch::kLong);
  CausalJEPAOutput a = cpu->forward(slots, hidden);
  CausalJEPAOutput b = gpu->forward(slots.cuda(), hidden.cuda());
  ASSERT_TRUE(b.pred.is_cuda());
  EXPECT_LT(max_abs_diff(b.pred.cpu(), a.pred), kBound);
  a.pred.sum().backward();
  b.pred.sum().backward();
  testing::expect_same_grads(*cpu, *gpu, kBound);
}

}  // namespace
}  // namespace attnkit
