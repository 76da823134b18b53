// Builds one mechanism from the installed attnkit and checks that a forward pass runs.
#include <attnkit/attnkit.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  attnkit::GroupedQueryAttention attn(
      attnkit::GroupedQueryAttentionOptions(/*dim=*/32, /*num_heads=*/4, /*num_kv_heads=*/2)
          .causal(true));
  // attn->forward, not attn(...): ModuleHolder::operator() deduces its return type from
  // &Impl::forward, which is ambiguous for the overloaded attention forwards (it becomes void).
  torch::Tensor y = attn->forward(torch::randn({2, 5, 32}));
  if (y.sizes() != torch::IntArrayRef({2, 5, 32}) || !torch::isfinite(y).all().item<bool>()) {
    std::cerr << "consumer: unexpected output " << y.sizes() << "\n";
    return 1;
  }
  // A deep copy through the torch::nn::Module interface computes the same function.
  auto copy = std::dynamic_pointer_cast<attnkit::AttentionImpl>(attn->clone());
  if (!copy || !torch::equal(copy->forward(torch::ones({1, 3, 32})),
                             attn->forward(torch::ones({1, 3, 32})))) {
    std::cerr << "consumer: clone() differs from the original\n";
    return 1;
  }
  // The fused kernels follow torch::set_num_threads: one OpenMP runtime.
  torch::set_num_threads(1);
  if (attnkit::kernel_threads() != 1 || attnkit::openmp_runtimes().size() != 1) {
    std::cerr << "consumer: kernel threads " << attnkit::kernel_threads() << ", "
              << attnkit::openmp_runtimes().size() << " OpenMP runtimes\n";
    return 1;
  }
  std::cout << "consumer: ok " << y.sizes() << "\n";
  return 0;
}
