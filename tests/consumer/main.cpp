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
  std::cout << "consumer: ok " << y.sizes() << "\n";
  return 0;
}
