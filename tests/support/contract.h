#pragma once
// The contract every sequence-to-sequence mechanism meets, as one value-parameterised suite.
// A mechanism's test file instantiates it with a factory:
//
//   ATTNKIT_CONTRACT_SUITE(GroupedQuery,
//       ContractCase{"causal", [] { return as_attention(GroupedQueryAttention(
//           GroupedQueryAttentionOptions(32, 4, 2).causal(true))); }, /*causal=*/true});

#include <attnkit/attention/attention.h>

#include <gtest/gtest.h>

#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace attnkit {
namespace testing {

struct ContractCase {
  /// Test-name suffix: letters, digits and underscores only.
  std::string name;
  /// Builds a fresh module from the global RNG (float32, CPU).
  std::function<Attention()> make;
  /// Whether outputs at t may depend only on inputs at <= t (checked), and decoding must
  /// reproduce the full forward (checked when the module supports decoding).
  bool causal = false;
  /// Whether forward(x, attn_mask) is supported (the fully masked row check needs it).
  bool takes_mask = true;
  int64_t batch_size = 2;
  int64_t seq_len = 11;
  /// Name prefixes of parameters that learn only from an auxiliary loss (an indexer behind a
  /// top-k selection): the output-gradient check skips them.
  std::vector<std::string> aux_trained = {};
};

/// `c` with parameters under `prefixes` exempt from the output-gradient check.
ContractCase with_aux_trained(ContractCase c, std::vector<std::string> prefixes);

std::ostream& operator<<(std::ostream& stream, const ContractCase& c);

class AttentionContract : public ::testing::TestWithParam<ContractCase> {};

/// Copies every parameter of `from` into the parameter of the same name in `to` (names and
/// shapes must match: a mismatch fails the test).
void copy_parameters(const torch::nn::Module& from, torch::nn::Module& to);

/// Expects every parameter of `actual` (any device) to have the gradient of the same-named
/// parameter of `expected` within `bound`, or none where it has none.
void expect_same_grads(const torch::nn::Module& expected,
                       const torch::nn::Module& actual,
                       double bound);

/// Largest absolute difference, as a double (for readable EXPECT_LT messages).
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace testing
}  // namespace attnkit

#define ATTNKIT_CONTRACT_SUITE(prefix, ...)                                        \
  using ::attnkit::testing::AttentionContract;                                     \
  INSTANTIATE_TEST_SUITE_P(                                                        \
      prefix, AttentionContract, ::testing::Values(__VA_ARGS__),                   \
      [](const ::testing::TestParamInfo<::attnkit::testing::ContractCase>& info) { \
        return info.param.name;                                                    \
      })

/// Expects `statement` to throw a c10::Error whose message contains every listed substring.
#define ATTNKIT_EXPECT_ERROR(statement, ...) \
  EXPECT_THAT([&] { statement; },            \
              ::testing::ThrowsMessage<c10::Error>(::testing::AllOf(__VA_ARGS__)))
