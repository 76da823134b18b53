#include "support/contract.h"
#include "support/tolerance.h"

#include <gmock/gmock.h>
#include <torch/torch.h>

namespace attnkit {
namespace testing {

std::ostream& operator<<(std::ostream& stream, const ContractCase& c) {
  return stream << c.name << (c.causal ? " (causal)" : "");
}

ContractCase with_aux_trained(ContractCase c, std::vector<std::string> prefixes) {
  c.aux_trained = std::move(prefixes);
  return c;
}

void copy_parameters(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto src = from.named_parameters();
  auto dst = to.named_parameters();
  ASSERT_EQ(src.size(), dst.size()) << "parameter counts differ";
  for (const auto& p : src) {
    auto* target = dst.find(p.key());
    ASSERT_NE(target, nullptr) << "no parameter named " << p.key();
    ASSERT_EQ(target->sizes(), p.value().sizes()) << p.key();
    target->copy_(p.value());
  }
}

void expect_same_grads(const torch::nn::Module& expected,
                       const torch::nn::Module& actual,
                       double bound) {
  auto actual_params = actual.named_parameters();
  for (const auto& p : expected.named_parameters()) {
    const torch::Tensor& g = actual_params[p.key()].grad();
    ASSERT_EQ(g.defined(), p.value().grad().defined()) << p.key();
    if (g.defined()) {
      EXPECT_LT(max_abs_diff(g.cpu(), p.value().grad()), bound) << p.key();
    }
  }
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

namespace {

constexpr double kTol = 1e-5;

torch::Tensor input_for(const ContractCase& c, const Attention& m) {
  return torch::randn({c.batch_size, c.seq_len, m->dim()});
}

}  // namespace

TEST_P(AttentionContract, OutputShape) {
  torch::manual_seed(0);
  Attention m = GetParam().make();
  m->eval();
  torch::Tensor x = input_for(GetParam(), m);
  torch::Tensor y = m(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(y.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

TEST_P(AttentionContract, Causality) {
  const ContractCase& c = GetParam();
  if (!c.causal) GTEST_SKIP() << "not causal";
  torch::manual_seed(1);
  Attention m = c.make();
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = input_for(c, m);
  for (int64_t t : {c.seq_len - 1, c.seq_len / 2}) {
    torch::Tensor x2 = x.clone();
    x2.narrow(1, t, c.seq_len - t).add_(5.0);  // perturb position t and everything after it
    torch::Tensor y = m(x), y2 = m(x2);
    EXPECT_LT(max_abs_diff(y.narrow(1, 0, t), y2.narrow(1, 0, t)), kTol) << "perturbed at " << t;
    EXPECT_GT(max_abs_diff(y.narrow(1, t, 1), y2.narrow(1, t, 1)), 1e-4)
        << "output at " << t << " ignores its own input";
  }
}

TEST_P(AttentionContract, GradientsReachEveryParameter) {
  torch::manual_seed(2);
  Attention m = GetParam().make();
  m->train();
  torch::Tensor x = input_for(GetParam(), m).requires_grad_(true);
  (m(x) * torch::randn({x.size(0), x.size(1), x.size(2)})).sum().backward();
  const auto& exempt = GetParam().aux_trained;
  for (const auto& prefix : exempt) {
    bool found = false;
    for (const auto& p : m->named_parameters()) found |= p.key().rfind(prefix, 0) == 0;
    EXPECT_TRUE(found) << "aux_trained prefix '" << prefix << "' matches no parameter";
  }
  for (const auto& p : m->named_parameters()) {
    auto is_exempt = [&](const std::string& prefix) { return p.key().rfind(prefix, 0) == 0; };
    if (std::any_of(exempt.begin(), exempt.end(), is_exempt)) continue;
    ASSERT_TRUE(p.value().grad().defined()) << p.key() << " got no gradient";
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key() << " has zero gradient";
  }
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0);
}

TEST_P(AttentionContract, BatchIndependence) {
  torch::manual_seed(3);
  Attention m = GetParam().make();
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = input_for(GetParam(), m);
  torch::Tensor y = m(x);
  for (int64_t b = 0; b < x.size(0); ++b) {
    EXPECT_LT(max_abs_diff(m(x.narrow(0, b, 1)), y.narrow(0, b, 1)), kTol) << "sample " << b;
  }
}

TEST_P(AttentionContract, DeterministicUnderSeed) {
  torch::manual_seed(4);
  Attention a = GetParam().make();
  torch::Tensor x = input_for(GetParam(), a);
  torch::manual_seed(4);
  Attention b = GetParam().make();
  a->eval();
  b->eval();
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(a(x), b(x)));
}

TEST_P(AttentionContract, Float64InFloat64Out) {
  torch::manual_seed(5);
  Attention m = GetParam().make();
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = input_for(GetParam(), m);
  torch::Tensor y32 = m(x);
  m->to(torch::kDouble);
  torch::Tensor y64 = m(x.to(torch::kDouble));
  EXPECT_EQ(y64.scalar_type(), torch::kDouble);
  EXPECT_LT(max_abs_diff(y32, y64), 1e-4);
}

TEST_P(AttentionContract, FullyMaskedRowIsFinite) {
  const ContractCase& c = GetParam();
  if (!c.takes_mask) GTEST_SKIP() << "mechanism takes no attn_mask";
  torch::manual_seed(6);
  Attention m = c.make();
  m->eval();
  torch::Tensor x = input_for(c, m);
  torch::Tensor keep = torch::ones({c.seq_len, c.seq_len}, torch::kBool);
  keep[2].fill_(false);  // query 2 sees nothing
  torch::Tensor x_grad = x.clone().requires_grad_(true);
  torch::Tensor y = m(x_grad, keep);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  y.sum().backward();
  EXPECT_TRUE(torch::isfinite(x_grad.grad()).all().item<bool>());
}

TEST_P(AttentionContract, AuxUnderAMaskMatchesForward) {
  const ContractCase& c = GetParam();
  torch::manual_seed(6);
  Attention m = c.make();
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = input_for(c, m);
  torch::Tensor keep = torch::rand({c.seq_len, c.seq_len}) > 0.3;
  keep.diagonal().fill_(true);
  if (!c.takes_mask) {
    ATTNKIT_EXPECT_ERROR(m->forward_with_aux(x, keep), ::testing::HasSubstr(m->mechanism()),
                         ::testing::HasSubstr("attn_mask"));
    return;
  }
  AttentionOutput aux = m->forward_with_aux(x, keep);
  EXPECT_TRUE(testing::close(aux.output, m(x, keep)));
  if (aux.attn_weights.defined() && aux.attn_weights.size(-1) == c.seq_len) {
    // the weights of masked keys are 0 (the weights span the keys where their last dim is T)
    torch::Tensor masked = keep.logical_not().expand_as(aux.attn_weights);
    EXPECT_EQ(aux.attn_weights.masked_select(masked).abs().max().item<double>(), 0.0);
  }
}

TEST_P(AttentionContract, DecodingMatchesFullForward) {
  const ContractCase& c = GetParam();
  torch::manual_seed(7);
  Attention m = c.make();
  if (!m->supports_decoding()) GTEST_SKIP() << "no decoding";
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = input_for(c, m);
  torch::Tensor full = m(x);

  // chunks of uneven length: a prefill, a single token, then the rest
  DecodeState chunked = m->init_state(c.batch_size);
  std::vector<torch::Tensor> parts;
  int64_t t = 0;
  for (int64_t len : {int64_t{5}, int64_t{1}, int64_t{3}, c.seq_len}) {
    len = std::min(len, c.seq_len - t);
    if (len <= 0) break;
    parts.push_back(m->forward(x.narrow(1, t, len), chunked));
    t += len;
  }
  EXPECT_EQ(chunked.length(), c.seq_len);
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), kTol) << "chunked decoding";

  DecodeState single = m->init_state(c.batch_size);
  parts.clear();
  for (int64_t i = 0; i < c.seq_len; ++i) parts.push_back(m->forward(x.narrow(1, i, 1), single));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), kTol) << "token-by-token decoding";
  EXPECT_GT(single.bytes(), 0);
}

TEST_P(AttentionContract, DecodeStateFromElsewhereIsRejected) {
  const ContractCase& c = GetParam();
  torch::manual_seed(8);
  Attention m = c.make();
  Attention other = c.make();
  torch::Tensor x = input_for(c, m);
  if (!m->supports_decoding()) {
    EXPECT_THROW(m->init_state(c.batch_size), c10::Error);
    return;
  }
  DecodeState foreign = other->init_state(c.batch_size);
  ATTNKIT_EXPECT_ERROR(m->forward(x, foreign), ::testing::HasSubstr(m->mechanism()),
                       ::testing::HasSubstr("another module"));
  DecodeState wrong_batch = m->init_state(c.batch_size + 1);
  ATTNKIT_EXPECT_ERROR(m->forward(x, wrong_batch), ::testing::HasSubstr("batch size"));
}

TEST_P(AttentionContract, BadInputIsRejected) {
  torch::manual_seed(9);
  Attention m = GetParam().make();
  const int64_t D = m->dim();
  using ::testing::HasSubstr;
  ATTNKIT_EXPECT_ERROR(m(torch::randn({4, D})), HasSubstr(m->mechanism()), HasSubstr("3-D"));
  ATTNKIT_EXPECT_ERROR(m(torch::randn({2, 4, D + 1})), HasSubstr(m->mechanism()),
                       HasSubstr("dim (" + std::to_string(D) + ")"));
  ATTNKIT_EXPECT_ERROR(m(torch::ones({2, 4, D}, torch::kLong)), HasSubstr(m->mechanism()),
                       HasSubstr("floating-point"));
  if (GetParam().takes_mask) {
    ATTNKIT_EXPECT_ERROR(m(torch::randn({2, 4, D}), torch::ones({3, 4}, torch::kBool)),
                         HasSubstr(m->mechanism()), HasSubstr("attn_mask"));
  }
}

TEST_P(AttentionContract, CloneIsDeep) {
  torch::manual_seed(11);
  Attention m = GetParam().make();
  m->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = input_for(GetParam(), m);
  torch::Tensor y = m(x);
  auto copy = std::dynamic_pointer_cast<AttentionImpl>(m->clone());
  ASSERT_TRUE(copy) << "clone() did not return an AttentionImpl";
  EXPECT_EQ(copy->mechanism(), m->mechanism());
  EXPECT_FALSE(copy->is_training());
  Attention cloned(copy);
  EXPECT_TRUE(torch::equal(cloned(x), y));
  auto original = m->named_parameters();
  ASSERT_EQ(copy->named_parameters().size(), original.size());
  for (auto& p : copy->named_parameters()) {
    ASSERT_NE(p.value().data_ptr(), original[p.key()].data_ptr()) << p.key() << " is shared";
    p.value().add_(1.0);
  }
  EXPECT_TRUE(torch::equal(m(x), y)) << "changing the clone changed the original";
}

// Runs only where LibTorch sees a CUDA device: the same module and input on the CPU and on the
// GPU, in float64 (so the bound is rounding only), forward, backward and decoding.
TEST_P(AttentionContract, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const ContractCase& c = GetParam();
  torch::manual_seed(12);
  Attention cpu = c.make();
  cpu->eval();
  cpu->to(torch::kDouble);
  const torch::Device cuda(torch::kCUDA);
  Attention gpu(std::dynamic_pointer_cast<AttentionImpl>(cpu->clone(cuda)));
  for (const auto& p : gpu->parameters()) ASSERT_TRUE(p.is_cuda());
  torch::Tensor x = input_for(c, cpu).to(torch::kDouble);
  torch::Tensor x_cpu = x.clone().requires_grad_(true);
  torch::Tensor x_gpu = x.to(cuda).requires_grad_(true);
  torch::Tensor y_cpu = cpu(x_cpu), y_gpu = gpu(x_gpu);
  ASSERT_TRUE(y_gpu.is_cuda());
  constexpr double kBound = 1e-9;
  EXPECT_LT(max_abs_diff(y_gpu.cpu(), y_cpu), kBound) << "forward";
  torch::Tensor g = torch::randn_like(y_cpu);
  y_cpu.backward(g);
  y_gpu.backward(g.to(cuda));
  EXPECT_LT(max_abs_diff(x_gpu.grad().cpu(), x_cpu.grad()), kBound) << "input gradient";
  expect_same_grads(*cpu, *gpu, kBound);
  if (!gpu->supports_decoding()) return;
  torch::NoGradGuard no_grad;
  torch::Tensor full = gpu(x.to(cuda));
  DecodeState state = gpu->init_state(c.batch_size);
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < c.seq_len; ++t) {
    steps.push_back(gpu->forward(x.to(cuda).narrow(1, t, 1), state));
  }
  EXPECT_LT(max_abs_diff(torch::cat(steps, 1).cpu(), full.cpu()), kBound) << "decoding on CUDA";
}

}  // namespace testing
}  // namespace attnkit
