#include <attnkit/attention/gated_delta_net.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "support/contract.h"
#include "support/tolerance.h"

#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace attnkit {
namespace {

using testing::ContractCase;
using ::testing::HasSubstr;
using testing::max_abs_diff;

// Gated DeltaNet is causal by construction. Its attn_mask is a [B, T] key-padding mask, not the
// [T, T] mask the contract's fully-masked-row check passes, so takes_mask is false here; the
// padding mask has its own tests below.
ATTNKIT_CONTRACT_SUITE(
    GatedDeltaNet,
    ContractCase{"mamba",
                 [] { return as_attention(GatedDeltaNet(GatedDeltaNetOptions(32, 2, 2))); }, true,
                 /*takes_mask=*/false},
    ContractCase{"logsigmoid_head_expansion",
                 [] {
                   return as_attention(GatedDeltaNet(GatedDeltaNetOptions(32, 2, 4).decay_gate(
                       LogSigmoidDecayGateOptions().normalizer(8))));
                 },
                 true, false},
    ContractCase{"conv1_no_l2norm_odd_heads",
                 [] {
                   return as_attention(GatedDeltaNet(GatedDeltaNetOptions(24, 1, 3)
                                                         .head_qk_dim(5)
                                                         .head_v_dim(7)
                                                         .conv_size(1)
                                                         .use_qk_l2norm(false)));
                 },
                 true, false},
    ContractCase{"two_chunks",
                 [] {
                   return as_attention(
                       GatedDeltaNet(GatedDeltaNetOptions(16, 1, 2).head_qk_dim(8).head_v_dim(8)));
                 },
                 true, false, /*batch_size=*/1, /*seq_len=*/70});

// Sets an environment variable for the scope of a test.
class EnvGuard {
 public:
  EnvGuard(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    ::setenv(name, value, 1);
  }
  ~EnvGuard() {
    if (had_) {
      ::setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

// --- the rule: chunked, fused and reference kernels against the recurrence ----------------------

enum class Gate { kMamba, kLogSigmoid, kPadded };

struct RuleInputs {
  torch::Tensor q, k, v, g, beta, state;
};

// Inputs as the module makes them: unit-norm q and k, beta in (0, 1), g <= 0 from a gate.
RuleInputs make_rule_inputs(int64_t B,
                            int64_t Hqk,
                            int64_t Hv,
                            int64_t T,
                            int64_t Dk,
                            int64_t Dv,
                            Gate gate,
                            torch::ScalarType dtype = torch::kFloat) {
  RuleInputs in;
  auto unit = [](torch::Tensor x) { return x / x.norm(2, -1, true); };
  in.q = unit(torch::randn({B, Hqk, T, Dk}, dtype));
  in.k = unit(torch::randn({B, Hqk, T, Dk}, dtype));
  in.v = torch::randn({B, Hv, T, Dv}, dtype);
  in.beta = torch::sigmoid(torch::randn({B, Hv, T}, dtype));
  torch::Tensor logits = torch::randn({B, Hv, T}, dtype);
  if (gate == Gate::kLogSigmoid) {
    in.g = torch::log_sigmoid(logits) / 16.0;
  } else {
    // Mamba: -A softplus(logit + dt_bias) with A up to 16: strong decay in places.
    torch::Tensor A = torch::rand({1, Hv, 1}, dtype) * 16.0;
    in.g = -A * torch::softplus(logits - 2.0);
  }
  if (gate == Gate::kPadded) {
    // What a padded position carries into the rule in the module: q = k = v = 0 and
    // beta = 1/2 (g stays: the gate of a zero input still decays); here every third position
    // of the last sequence.
    torch::Tensor pad = torch::zeros({B, 1, T, 1}, torch::kBool);
    pad.select(0, B - 1).narrow(1, 0, T).select(2, 0).copy_(torch::arange(T) % 3 == 1);
    in.q = in.q.masked_fill(pad, 0.0);
    in.k = in.k.masked_fill(pad, 0.0);
    in.v = in.v.masked_fill(pad, 0.0);
    in.beta = in.beta.masked_fill(pad.squeeze(-1), 0.5);
  }
  in.state = torch::randn({B, Hv, Dk, Dv}, dtype) * 0.5;
  return in;
}

struct RuleCase {
  int64_t T;
  int64_t expansion;  // Hv / Hqk
  Gate gate;
};

void PrintTo(const RuleCase& c, std::ostream* os) {
  *os << "T=" << c.T << " Hv/Hqk=" << c.expansion << " gate=" << static_cast<int>(c.gate);
}

std::string rule_case_name(const ::testing::TestParamInfo<RuleCase>& info) {
  const char* gate = info.param.gate == Gate::kMamba        ? "mamba"
                     : info.param.gate == Gate::kLogSigmoid ? "logsigmoid"
                                                            : "padded";
  return "T" + std::to_string(info.param.T) + "_x" + std::to_string(info.param.expansion) + "_" +
         gate;
}

class GatedDeltaRule : public ::testing::TestWithParam<RuleCase> {};

TEST_P(GatedDeltaRule, ChunkedAndKernelsMatchRecurrence) {
  const RuleCase c = GetParam();
  torch::manual_seed(c.T * 10 + c.expansion);
  const int64_t B = 2, Hqk = 2, Hv = Hqk * c.expansion, Dk = 16, Dv = 12;
  RuleInputs in = make_rule_inputs(B, Hqk, Hv, c.T, Dk, Dv, c.gate);
  for (bool with_state : {false, true}) {
    torch::Tensor s0 = with_state ? in.state : torch::Tensor();
    GatedDeltaRuleOutput ref = gated_delta_rule_recurrent(in.q, in.k, in.v, in.g, in.beta, s0);
    EXPECT_EQ(ref.output.sizes(), (std::vector<int64_t>{B, Hv, c.T, Dv}));
    EXPECT_EQ(ref.final_state.sizes(), (std::vector<int64_t>{B, Hv, Dk, Dv}));
    GatedDeltaRuleOutput chunked = gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta, s0);
    EXPECT_LT(max_abs_diff(chunked.output, ref.output), 1e-4) << "chunked, state " << with_state;
    EXPECT_LT(max_abs_diff(chunked.final_state, ref.final_state), 1e-4) << "chunked state";
    for (const char* backend : {"fused", "reference"}) {
      EnvGuard env("ATTNKIT_BACKEND", backend);
      GatedDeltaRuleOutput kern = gated_delta_rule(in.q, in.k, in.v, in.g, in.beta, s0);
      EXPECT_LT(max_abs_diff(kern.output, ref.output), 1e-4) << backend << ", state " << with_state;
      EXPECT_LT(max_abs_diff(kern.final_state, ref.final_state), 1e-4) << backend << " state";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Lengths,
                         GatedDeltaRule,
                         ::testing::Values(RuleCase{1, 1, Gate::kMamba},
                                           RuleCase{37, 1, Gate::kLogSigmoid},
                                           RuleCase{37, 2, Gate::kMamba},
                                           RuleCase{64, 2, Gate::kLogSigmoid},
                                           RuleCase{64, 1, Gate::kPadded},
                                           RuleCase{130, 1, Gate::kMamba},
                                           RuleCase{130, 2, Gate::kLogSigmoid},
                                           RuleCase{130, 2, Gate::kPadded}),
                         rule_case_name);

TEST(GatedDeltaRule, SmallChunksAndStridedInputsAgree) {
  torch::manual_seed(1);
  RuleInputs in = make_rule_inputs(2, 1, 3, 29, 8, 6, Gate::kMamba, torch::kDouble);
  // Non-contiguous views: q a slice of wider rows, k stored [B, H, d, T] (channel stride T),
  // v stored [B, T, H, d] and transposed, as the module passes it.
  torch::Tensor q = torch::cat({in.q, torch::zeros_like(in.q)}, -1).narrow(-1, 0, 8);
  torch::Tensor k = in.k.transpose(2, 3).contiguous().transpose(2, 3);
  torch::Tensor v = in.v.transpose(1, 2).contiguous().transpose(1, 2);
  ASSERT_FALSE(q.is_contiguous() || k.is_contiguous() || v.is_contiguous());
  GatedDeltaRuleOutput ref = gated_delta_rule_recurrent(q, k, v, in.g, in.beta, in.state);
  for (int64_t chunk : {1, 5, 16, 29, 100}) {
    auto opts = GatedDeltaRuleOptions().chunk_size(chunk);
    GatedDeltaRuleOutput c = gated_delta_rule_chunked(q, k, v, in.g, in.beta, in.state, opts);
    EXPECT_LT(max_abs_diff(c.output, ref.output), 1e-10) << "chunk " << chunk;
    EXPECT_LT(max_abs_diff(c.final_state, ref.final_state), 1e-10) << "chunk " << chunk;
    for (const char* backend : {"fused", "reference"}) {
      EnvGuard env("ATTNKIT_BACKEND", backend);
      GatedDeltaRuleOutput kern = gated_delta_rule(q, k, v, in.g, in.beta, in.state, opts);
      EXPECT_EQ(kern.output.scalar_type(), torch::kDouble);
      EXPECT_LT(max_abs_diff(kern.output, ref.output), 1e-10) << backend << " chunk " << chunk;
      EXPECT_LT(max_abs_diff(kern.final_state, ref.final_state), 1e-10) << backend;
    }
  }
}

TEST(GatedDeltaRule, EveryIsaPathOfTheFusedKernelAgrees) {
  torch::manual_seed(4);
  RuleInputs in = make_rule_inputs(2, 2, 4, 75, 64, 32, Gate::kMamba);
  GatedDeltaRuleOutput ref = gated_delta_rule_recurrent(in.q, in.k, in.v, in.g, in.beta, in.state);
  EnvGuard backend("ATTNKIT_BACKEND", "fused");
  // A path the CPU lacks is capped at the best it has (every path is exercised where it exists).
  for (const char* isa : testing::isa_paths()) {
    EnvGuard env("ATTNKIT_CPU_CAPABILITY", isa);
    GatedDeltaRuleOutput r = gated_delta_rule(in.q, in.k, in.v, in.g, in.beta, in.state);
    EXPECT_LT(max_abs_diff(r.output, ref.output), 1e-4) << isa;
    EXPECT_LT(max_abs_diff(r.final_state, ref.final_state), 1e-4) << isa;
  }
  EnvGuard env("ATTNKIT_CPU_CAPABILITY", "sse9");
  ATTNKIT_EXPECT_ERROR(gated_delta_rule(in.q, in.k, in.v, in.g, in.beta),
                       HasSubstr("ATTNKIT_CPU_CAPABILITY must be reference, avx2 or avx512, got "
                                 "'sse9'"));
}

TEST(GatedDeltaRule, RecurrenceIsTheSpecLoop) {
  // One head, written out: S <- exp(g) S; u = beta (v - S^T k); S <- S + k u^T; o = S^T q /
  // sqrt(dk)
  torch::manual_seed(2);
  RuleInputs in = make_rule_inputs(1, 1, 1, 6, 3, 2, Gate::kLogSigmoid, torch::kDouble);
  auto q = in.q[0][0], k = in.k[0][0], v = in.v[0][0], g = in.g[0][0], beta = in.beta[0][0];
  std::vector<std::vector<double>> S(3, std::vector<double>(2, 0.0));
  torch::Tensor expected = torch::zeros({6, 2}, torch::kDouble);
  for (int64_t t = 0; t < 6; ++t) {
    const double decay = std::exp(g[t].item<double>());
    for (auto& row : S)
      for (double& s : row) s *= decay;
    for (int64_t j = 0; j < 2; ++j) {
      double sk = 0;
      for (int64_t i = 0; i < 3; ++i) sk += S[i][j] * k[t][i].item<double>();
      const double u = beta[t].item<double>() * (v[t][j].item<double>() - sk);
      for (int64_t i = 0; i < 3; ++i) S[i][j] += k[t][i].item<double>() * u;
    }
    for (int64_t j = 0; j < 2; ++j) {
      double o = 0;
      for (int64_t i = 0; i < 3; ++i) o += S[i][j] * q[t][i].item<double>() / std::sqrt(3.0);
      expected[t][j] = o;
    }
  }
  GatedDeltaRuleOutput r = gated_delta_rule_recurrent(in.q, in.k, in.v, in.g, in.beta);
  EXPECT_LT(max_abs_diff(r.output[0][0], expected), 1e-12);
  EXPECT_LT(max_abs_diff(r.final_state[0][0][2][1], torch::tensor(S[2][1], torch::kDouble)), 1e-12);
}

TEST(GatedDeltaRule, StateCarriesAcrossCalls) {
  torch::manual_seed(3);
  RuleInputs in = make_rule_inputs(1, 2, 4, 50, 8, 8, Gate::kMamba);
  GatedDeltaRuleOutput full = gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta);
  auto part = [&](const torch::Tensor& x, int64_t start, int64_t len) {
    return x.narrow(2, start, len);
  };
  GatedDeltaRuleOutput a = gated_delta_rule(part(in.q, 0, 20), part(in.k, 0, 20), part(in.v, 0, 20),
                                            part(in.g, 0, 20), part(in.beta, 0, 20));
  GatedDeltaRuleOutput b =
      gated_delta_rule(part(in.q, 20, 30), part(in.k, 20, 30), part(in.v, 20, 30),
                       part(in.g, 20, 30), part(in.beta, 20, 30), a.final_state);
  EXPECT_LT(max_abs_diff(torch::cat({a.output, b.output}, 2), full.output), 1e-5);
  EXPECT_LT(max_abs_diff(b.final_state, full.final_state), 1e-5);
}

TEST(GatedDeltaRule, ChunkedGradientsMatchRecurrence) {
  for (int64_t T : {37, 70}) {
    torch::manual_seed(T);
    RuleInputs in = make_rule_inputs(2, 1, 2, T, 6, 5, Gate::kMamba, torch::kDouble);
    std::vector<torch::Tensor> leaves = {in.q, in.k, in.v, in.g, in.beta, in.state};
    const std::vector<std::string> names = {"q", "k", "v", "g", "beta", "initial_state"};
    torch::Tensor dout = torch::randn({2, 2, T, 5}, torch::kDouble);
    torch::Tensor dstate = torch::randn({2, 2, 6, 5}, torch::kDouble);
    auto grads = [&](bool chunked, int64_t chunk) {
      std::vector<torch::Tensor> x;
      for (const auto& l : leaves) x.push_back(l.detach().clone().requires_grad_(true));
      auto opts = GatedDeltaRuleOptions().chunk_size(chunk);
      GatedDeltaRuleOutput r =
          chunked ? gated_delta_rule(x[0], x[1], x[2], x[3], x[4], x[5], opts)
                  : gated_delta_rule_recurrent(x[0], x[1], x[2], x[3], x[4], x[5], opts);
      ((r.output * dout).sum() + (r.final_state * dstate).sum()).backward();
      std::vector<torch::Tensor> g;
      for (const auto& t : x) g.push_back(t.grad());
      return g;
    };
    std::vector<torch::Tensor> expected = grads(false, 64);
    for (int64_t chunk : {16, 64}) {
      std::vector<torch::Tensor> got = grads(true, chunk);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(got[i].defined()) << names[i];
        EXPECT_GT(expected[i].abs().max().item<double>(), 1e-3) << names[i];
        EXPECT_LT(max_abs_diff(got[i], expected[i]), 1e-9)
            << "d" << names[i] << ", T " << T << ", chunk " << chunk;
      }
    }
  }
}

TEST(GatedDeltaRule, BadInputsAreRejected) {
  RuleInputs in = make_rule_inputs(1, 2, 2, 4, 4, 4, Gate::kMamba);
  auto v3 = torch::randn({1, 3, 4, 4});
  auto g3 = torch::randn({1, 3, 4}).neg().abs();
  ATTNKIT_EXPECT_ERROR(gated_delta_rule_chunked(in.q, in.k, v3, g3, g3),
                       HasSubstr("gated_delta_rule_chunked"), HasSubstr("value heads of v (3)"),
                       HasSubstr("query/key heads of q (2)"));
  ATTNKIT_EXPECT_ERROR(gated_delta_rule(in.q, in.k, in.v, in.g.narrow(2, 0, 3), in.beta),
                       HasSubstr("gated_delta_rule"), HasSubstr("g of shape [B, Hv, T]"));
  ATTNKIT_EXPECT_ERROR(gated_delta_rule_recurrent(in.q, in.k.narrow(3, 0, 2), in.v, in.g, in.beta),
                       HasSubstr("k of q's shape"));
  ATTNKIT_EXPECT_ERROR(
      gated_delta_rule(in.q, in.k, in.v, in.g, in.beta, torch::zeros({1, 2, 4, 3})),
      HasSubstr("initial_state of shape"));
  ATTNKIT_EXPECT_ERROR(gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta, {},
                                                GatedDeltaRuleOptions().chunk_size(0)),
                       HasSubstr("chunk_size must be >= 1, got 0"));
  EnvGuard env("ATTNKIT_BACKEND", "fast");
  ATTNKIT_EXPECT_ERROR(gated_delta_rule(in.q, in.k, in.v, in.g, in.beta),
                       HasSubstr("ATTNKIT_BACKEND must be reference or fused, got 'fast'"));
}

// --- the module against a naive re-implementation of docs/catalog.md, "Gated DeltaNet" ---------

// Every step of the spec with explicit loops over t (convolution, recurrence), in double, on the
// module's weights. mask: [B, T] bool or undefined.
torch::Tensor naive_gated_delta_net(GatedDeltaNet& m,
                                    const torch::Tensor& x,
                                    const torch::Tensor& mask = {}) {
  torch::NoGradGuard no_grad;
  const auto& o = m->options;
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t Hqk = o.num_qk_heads(), Hv = o.num_v_heads(), W = o.conv_size();
  const int64_t Dk = m->head_qk_dim(), Dv = m->head_v_dim();
  auto w = [](const torch::Tensor& t) { return t.detach().to(torch::kDouble); };
  torch::Tensor h = x.to(torch::kDouble);
  if (mask.defined()) h = h * mask.unsqueeze(-1).to(torch::kDouble);
  // 2. projection, then y[t] = silu(sum_i w[:, i] u[t - W + 1 + i]) with zeros before 0
  torch::Tensor u = h.matmul(w(m->qkv_proj->weight).t());  // [B, T, Cch]
  torch::Tensor cw = w(m->qkv_conv1d->weight);             // [Cch, W]
  torch::Tensor conv = torch::zeros_like(u);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < W; ++i) {
      const int64_t src = t - W + 1 + i;
      if (src >= 0) conv.select(1, t).add_(u.select(1, src) * cw.select(1, i));
    }
  }
  conv = conv / (1.0 + torch::exp(-conv));  // silu
  torch::Tensor q = conv.narrow(2, 0, Hqk * Dk).reshape({B, T, Hqk, Dk});
  torch::Tensor k = conv.narrow(2, Hqk * Dk, Hqk * Dk).reshape({B, T, Hqk, Dk});
  torch::Tensor v = conv.narrow(2, 2 * Hqk * Dk, Hv * Dv).reshape({B, T, Hv, Dv});
  if (o.use_qk_l2norm()) {
    q = q / torch::sqrt((q * q).sum(-1, true) + 1e-6);
    k = k / torch::sqrt((k * k).sum(-1, true) + 1e-6);
  }
  // 3. decay gate, 4. beta
  torch::Tensor logits = h.matmul(w(m->decay_gate->proj->weight).t());  // [B, T, Hv]
  torch::Tensor g;
  if (std::holds_alternative<MambaDecayGateOptions>(o.decay_gate())) {
    torch::Tensor z = logits + w(m->decay_gate->dt_bias);
    g = -torch::exp(w(m->decay_gate->A_log)) * torch::log1p(torch::exp(z));
  } else {
    const double n = std::get<LogSigmoidDecayGateOptions>(o.decay_gate()).normalizer();
    g = -torch::log1p(torch::exp(-logits)) / n;
  }
  torch::Tensor beta = 1.0 / (1.0 + torch::exp(-h.matmul(w(m->b_proj->weight).t())));
  // 5.-6. value head j reads qk head j / (Hv / Hqk); the recurrence per (b, j)
  torch::Tensor out = torch::zeros({B, T, Hv, Dv}, torch::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < Hv; ++j) {
      const int64_t i = j / (Hv / Hqk);
      torch::Tensor S = torch::zeros({Dk, Dv}, torch::kDouble);
      for (int64_t t = 0; t < T; ++t) {
        S = S * std::exp(g[b][t][j].item<double>());
        torch::Tensor kt = k[b][t][i], vt = v[b][t][j], qt = q[b][t][i] / std::sqrt(double(Dk));
        torch::Tensor ut = beta[b][t][j] * (vt - S.t().mv(kt));
        S = S + torch::outer(kt, ut);
        out[b][t][j] = S.t().mv(qt);
      }
    }
  }
  // 7. per-head RMSNorm, gate, output projection
  out = out / torch::sqrt((out * out).mean(-1, true) + o.norm_eps()) * w(m->out_norm->weight);
  torch::Tensor z = h.matmul(w(m->g_proj->weight).t());
  torch::Tensor y = out.reshape({B, T, Hv * Dv}) * (z / (1.0 + torch::exp(-z)));
  return y.matmul(w(m->o_proj->weight).t());
}

// Non-trivial out_norm weights so the comparison sees them.
void perturb_norm(GatedDeltaNet& m) {
  torch::NoGradGuard no_grad;
  m->out_norm->weight.uniform_(0.5, 1.5);
}

TEST(GatedDeltaNet, MatchesNaiveReimplementation) {
  struct Case {
    GatedDeltaNetOptions options;
    int64_t T;
  };
  std::vector<Case> cases = {
      {GatedDeltaNetOptions(32, 2, 2), 37},
      {GatedDeltaNetOptions(32, 2, 4).decay_gate(LogSigmoidDecayGateOptions()), 70},
      {GatedDeltaNetOptions(20, 1, 2).head_qk_dim(6).head_v_dim(5).conv_size(2).use_qk_l2norm(
           false),
       9},
      {GatedDeltaNetOptions(16, 2, 4).conv_size(1).norm_eps(1e-3), 5},
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    torch::manual_seed(c);
    GatedDeltaNet m(cases[c].options);
    perturb_norm(m);
    torch::Tensor x = torch::randn({2, cases[c].T, cases[c].options.dim()});
    torch::Tensor expected = naive_gated_delta_net(m, x);
    {
      // Without autograd the module runs the fused kernel, or its scalar reference.
      torch::NoGradGuard no_grad;
      for (const char* backend : {"fused", "reference"}) {
        EnvGuard env("ATTNKIT_BACKEND", backend);
        EXPECT_LT(max_abs_diff(m(x), expected), 1e-4) << "case " << c << ", " << backend;
      }
    }
    // With autograd on (the parameters require grad), the chunked torch form runs.
    EXPECT_LT(max_abs_diff(m(x), expected), 1e-4) << "case " << c << ", autograd path";
    // Double in, double out, to the naive double result.
    m->to(torch::kDouble);
    EXPECT_LT(max_abs_diff(m(x.to(torch::kDouble)), expected), 1e-10) << "case " << c;
  }
}

TEST(GatedDeltaNet, PaddingMaskMatchesNaive) {
  for (bool mamba : {true, false}) {
    torch::manual_seed(11);
    auto options = GatedDeltaNetOptions(16, 1, 2).head_qk_dim(8).head_v_dim(8);
    if (!mamba) options.decay_gate(LogSigmoidDecayGateOptions().normalizer(4));
    GatedDeltaNet m(options);
    perturb_norm(m);
    const int64_t T = 70;
    torch::Tensor x = torch::randn({3, T, 16});
    // left padding, right padding, and holes
    torch::Tensor mask = torch::ones({3, T}, torch::kBool);
    mask[0].narrow(0, 0, 9).fill_(false);
    mask[1].narrow(0, T - 16, 16).fill_(false);
    mask[2].copy_(torch::arange(T) % 5 != 2);
    torch::Tensor expected = naive_gated_delta_net(m, x, mask);
    torch::Tensor y = m(x, mask);  // autograd on: the chunked torch form
    EXPECT_LT(max_abs_diff(y, expected), 1e-4) << "mamba " << mamba;
    // Padded positions output exactly zero.
    EXPECT_EQ(y.masked_select(mask.logical_not().unsqueeze(-1)).abs().max().item<float>(), 0.0f);
    torch::NoGradGuard no_grad;  // the fused kernel
    EXPECT_LT(max_abs_diff(m(x, mask), expected), 1e-4) << "mamba " << mamba << ", fused";
  }
}

TEST(GatedDeltaNet, LeftPaddingEqualsUnpadded) {
  torch::manual_seed(12);
  GatedDeltaNet m(GatedDeltaNetOptions(16, 2, 4));
  torch::Tensor x = torch::randn({1, 20, 16});
  torch::Tensor padded = torch::cat({torch::randn({1, 7, 16}), x}, 1);  // junk in the pad
  torch::Tensor mask =
      torch::cat({torch::zeros({1, 7}, torch::kBool), torch::ones({1, 20}, torch::kBool)}, 1);
  torch::Tensor y = m(padded, mask);
  EXPECT_LT(max_abs_diff(y.narrow(1, 7, 20), m(x)), 1e-5);
  EXPECT_TRUE(torch::equal(y.narrow(1, 0, 7), torch::zeros({1, 7, 16})));
  // An all-true mask changes nothing; an undefined mask means none.
  EXPECT_TRUE(torch::equal(m(x, torch::ones({1, 20}, torch::kBool)), m(x)));
  EXPECT_TRUE(torch::equal(m(x, torch::Tensor()), m(x)));
}

TEST(GatedDeltaNet, FullyPaddedSequenceIsZeroWithFiniteGradients) {
  torch::manual_seed(18);
  GatedDeltaNet m(GatedDeltaNetOptions(16, 2, 4));
  torch::Tensor x = torch::randn({2, 6, 16}).requires_grad_(true);
  torch::Tensor mask = torch::ones({2, 6}, torch::kBool);
  mask[1].fill_(false);
  torch::Tensor y = m(x, mask);
  EXPECT_TRUE(torch::equal(y[1], torch::zeros({6, 16})));
  EXPECT_GT(y[0].abs().sum().item<double>(), 0.0);
  y.sum().backward();
  EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>());
  EXPECT_TRUE(torch::equal(x.grad()[1], torch::zeros({6, 16})));
  for (const auto& p : m->parameters()) EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
}

TEST(GatedDeltaNet, BadMasksAreRejected) {
  GatedDeltaNet m(GatedDeltaNetOptions(16, 2, 2));
  torch::Tensor x = torch::randn({2, 5, 16});
  ATTNKIT_EXPECT_ERROR(m(x, torch::ones({5, 5}, torch::kBool)), HasSubstr("GatedDeltaNet"),
                       HasSubstr("attn_mask of shape [B, T] = [2, 5]"), HasSubstr("[5, 5]"));
  ATTNKIT_EXPECT_ERROR(m(x, torch::ones({2, 5})), HasSubstr("bool key-padding attn_mask"));
}

TEST(GatedDeltaNet, GatesFollowTheirFormulas) {
  torch::manual_seed(13);
  torch::Tensor x = torch::randn({2, 3, 8});
  GatedDeltaDecayGate mamba(8, 4, MambaDecayGateOptions());
  torch::Tensor logits = mamba->proj(x);
  torch::Tensor expected = -mamba->A_log.exp() * torch::log1p(torch::exp(logits + mamba->dt_bias));
  EXPECT_TRUE(testing::close(mamba(x), expected));
  GatedDeltaDecayGate ls(8, 4, LogSigmoidDecayGateOptions().normalizer(5));
  EXPECT_TRUE(testing::close(ls(x), -torch::log1p(torch::exp(-ls->proj(x))) / 5.0));
  EXPECT_EQ(ls->named_parameters().size(), 1u);  // proj.weight only
  EXPECT_TRUE((mamba(x) <= 0).all().item<bool>());
}

TEST(GatedDeltaNet, InitialisationRanges) {
  torch::manual_seed(14);
  const double normalizer = 8.0, dt_min = 0.002, dt_max = 0.05;
  GatedDeltaDecayGate gate(4, 2000,
                           MambaDecayGateOptions()
                               .normalizer(normalizer)
                               .dt_min(dt_min)
                               .dt_max(dt_max)
                               .dt_init_floor(1e-4));
  torch::Tensor A = gate->A_log.exp();
  EXPECT_TRUE(torch::isfinite(gate->A_log).all().item<bool>());
  EXPECT_GT(A.min().item<double>(), 0.0);
  EXPECT_LE(A.max().item<double>(), normalizer * (1 + 1e-6));
  EXPECT_GT(A.max().item<double>(), 0.95 * normalizer);  // spread over (0, normalizer]
  EXPECT_LT(A.min().item<double>(), 0.05 * normalizer);
  EXPECT_NEAR(A.mean().item<double>(), normalizer / 2, 0.5);
  torch::Tensor dt = torch::softplus(gate->dt_bias.to(torch::kDouble));  // undo inverse softplus
  EXPECT_GE(dt.min().item<double>(), dt_min * (1 - 1e-5));
  EXPECT_LE(dt.max().item<double>(), dt_max * (1 + 1e-5));
  EXPECT_LT(dt.min().item<double>(), dt_min * 1.1);
  EXPECT_GT(dt.max().item<double>(), dt_max * 0.9);
  // log-uniform: the median sits near the geometric mean
  EXPECT_NEAR(std::log(dt.median().item<double>()), 0.5 * (std::log(dt_min) + std::log(dt_max)),
              0.2);
  // a floor above dt_max lifts every dt to it
  GatedDeltaDecayGate floored(4, 16, MambaDecayGateOptions().dt_init_floor(0.5));
  EXPECT_LT(max_abs_diff(torch::softplus(floored->dt_bias), torch::full({16}, 0.5)), 1e-5);

  GatedDeltaNet m(GatedDeltaNetOptions(32, 2, 4).conv_size(3));
  const double bound = 1.0 / std::sqrt(3.0);
  EXPECT_LE(m->qkv_conv1d->weight.abs().max().item<double>(), bound);
  EXPECT_GT(m->qkv_conv1d->weight.abs().max().item<double>(), 0.9 * bound);
  EXPECT_TRUE(torch::equal(m->out_norm->weight, torch::ones({8})));
}

TEST(GatedDeltaNet, ParameterNamesAndShapes) {
  // Qwen3.5 proportions in miniature: Hqk = 2, Hv = 4, dk = 6, dv = 5, W = 3.
  GatedDeltaNet m(GatedDeltaNetOptions(12, 2, 4).head_qk_dim(6).head_v_dim(5).conv_size(3));
  std::map<std::string, std::vector<int64_t>> expected = {{"qkv_proj.weight", {2 * 12 + 20, 12}},
                                                          {"g_proj.weight", {20, 12}},
                                                          {"b_proj.weight", {4, 12}},
                                                          {"decay_gate.proj.weight", {4, 12}},
                                                          {"decay_gate.A_log", {4}},
                                                          {"decay_gate.dt_bias", {4}},
                                                          {"qkv_conv1d.weight", {44, 3}},
                                                          {"out_norm.weight", {5}},
                                                          {"o_proj.weight", {12, 20}}};
  auto params = m->named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  for (const auto& p : params) {
    auto it = expected.find(p.key());
    ASSERT_NE(it, expected.end()) << "unexpected parameter " << p.key();
    EXPECT_EQ(p.value().sizes(), it->second) << p.key();
  }
  GatedDeltaNet ls(GatedDeltaNetOptions(12, 2, 4).decay_gate(LogSigmoidDecayGateOptions()));
  EXPECT_EQ(ls->named_parameters().size(), expected.size() - 2);  // no A_log, dt_bias
  EXPECT_EQ(ls->named_parameters().find("decay_gate.A_log"), nullptr);
}

TEST(GatedDeltaNet, PrettyPrintShowsEveryOption) {
  GatedDeltaNet m(GatedDeltaNetOptions(32, 2, 4).conv_size(3).use_qk_l2norm(false));
  std::ostringstream s;
  s << *m;
  EXPECT_THAT(s.str(), HasSubstr("attnkit::GatedDeltaNet(dim=32, num_qk_heads=2, num_v_heads=4, "
                                 "head_qk_dim=8, head_v_dim=8, norm_eps=1e-06, conv_size=3, "
                                 "decay_gate=Mamba(normalizer=16, dt_min=0.001, dt_max=0.1, "
                                 "dt_init_floor=0.0001), use_qk_l2norm=false)"));
  GatedDeltaNet ls(
      GatedDeltaNetOptions(8, 1, 1).decay_gate(LogSigmoidDecayGateOptions().normalizer(4)));
  std::ostringstream s2;
  s2 << *ls;
  EXPECT_THAT(s2.str(), HasSubstr("decay_gate=LogSigmoid(normalizer=4)"));
}

TEST(GatedDeltaNet, DecodeStateIsConstantSize) {
  torch::manual_seed(15);
  GatedDeltaNet m(GatedDeltaNetOptions(16, 1, 2).head_qk_dim(4).head_v_dim(8).conv_size(4));
  torch::NoGradGuard no_grad;
  DecodeState state = m->init_state(1);
  m->forward(torch::randn({1, 10, 16}), state);
  const int64_t bytes = state.bytes();
  // conv_state [1, W - 1, 2 * 4 + 2 * 8] and recurrent_state [1, 2, 4, 8], float
  EXPECT_EQ(bytes, (3 * 24 + 2 * 4 * 8) * 4);
  EXPECT_EQ(state.names(), (std::vector<std::string>{"conv_state", "recurrent_state"}));
  for (int i = 0; i < 90; ++i) m->forward(torch::randn({1, 1, 16}), state);
  EXPECT_EQ(state.length(), 100);
  EXPECT_EQ(state.bytes(), bytes);
}

TEST(GatedDeltaNet, DecodingWithGradModeMatches) {
  // Without a NoGradGuard the chunked torch form runs (chunk of 1 for single tokens).
  torch::manual_seed(16);
  GatedDeltaNet m(GatedDeltaNetOptions(16, 2, 4).decay_gate(LogSigmoidDecayGateOptions()));
  torch::Tensor x = torch::randn({2, 9, 16});
  torch::Tensor full = m(x);
  DecodeState state = m->init_state(2);
  std::vector<torch::Tensor> parts = {m->forward(x.narrow(1, 0, 4), state)};
  for (int64_t t = 4; t < 9; ++t) parts.push_back(m->forward(x.narrow(1, t, 1), state));
  EXPECT_LT(max_abs_diff(torch::cat(parts, 1), full), 1e-5);
}

TEST(GatedDeltaNet, CloneIsIndependent) {
  torch::manual_seed(17);
  GatedDeltaNet m(GatedDeltaNetOptions(16, 2, 2));
  auto copy = std::dynamic_pointer_cast<GatedDeltaNetImpl>(m->clone());
  ASSERT_NE(copy, nullptr);
  torch::Tensor x = torch::randn({1, 5, 16});
  EXPECT_TRUE(torch::equal(copy->forward(x), m(x)));
  {
    torch::NoGradGuard no_grad;
    copy->decay_gate->A_log.add_(1.0);
  }
  EXPECT_FALSE(torch::equal(copy->forward(x), m(x)));
}

TEST(GatedDeltaNet, ConstructorErrors) {
  using O = GatedDeltaNetOptions;
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(0, 1, 1)), HasSubstr("GatedDeltaNet"),
                       HasSubstr("dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 0, 1)),
                       HasSubstr("num_qk_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 1, -2)),
                       HasSubstr("num_v_heads must be positive, got -2"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(12, 2, 3)), HasSubstr("GatedDeltaNet"),
                       HasSubstr("num_v_heads (3) must be a multiple of num_qk_heads (2)"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 1, 1).head_qk_dim(-1)),
                       HasSubstr("head_qk_dim must be >= 0"), HasSubstr("got -1"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 1, 1).head_v_dim(-3)),
                       HasSubstr("head_v_dim must be >= 0"), HasSubstr("got -3"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(10, 1, 4)),
                       HasSubstr("dim (10) must be divisible by num_v_heads (4)"));
  EXPECT_NO_THROW(GatedDeltaNet(O(10, 1, 4).head_qk_dim(3).head_v_dim(3)));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 1, 1).norm_eps(0)),
                       HasSubstr("norm_eps must be > 0, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 1, 1).conv_size(0)),
                       HasSubstr("conv_size must be >= 1, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 1, 1).decay_gate(MambaDecayGateOptions().normalizer(0))),
                       HasSubstr("MambaDecayGateOptions normalizer must be > 0, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaNet(O(8, 1, 1).decay_gate(MambaDecayGateOptions().dt_min(0))),
                       HasSubstr("MambaDecayGateOptions dt_min must be > 0, got 0"));
  ATTNKIT_EXPECT_ERROR(
      GatedDeltaNet(O(8, 1, 1).decay_gate(MambaDecayGateOptions().dt_min(0.2).dt_max(0.1))),
      HasSubstr("dt_max (0.1) must be >= dt_min (0.2)"));
  ATTNKIT_EXPECT_ERROR(
      GatedDeltaNet(O(8, 1, 1).decay_gate(MambaDecayGateOptions().dt_init_floor(-1))),
      HasSubstr("dt_init_floor must be >= 0, got -1"));
  ATTNKIT_EXPECT_ERROR(
      GatedDeltaNet(O(8, 1, 1).decay_gate(LogSigmoidDecayGateOptions().normalizer(-2))),
      HasSubstr("LogSigmoidDecayGateOptions normalizer must be > 0, got -2"));
  // The submodules check their own arguments too.
  ATTNKIT_EXPECT_ERROR(GatedDeltaDecayGate(0, 2, MambaDecayGateOptions()),
                       HasSubstr("decay gate dim must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaDecayGate(4, 0, LogSigmoidDecayGateOptions()),
                       HasSubstr("decay gate num_heads must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaShortConv(0, 4),
                       HasSubstr("short convolution channels must be positive, got 0"));
  ATTNKIT_EXPECT_ERROR(GatedDeltaShortConv(4, 0), HasSubstr("conv_size must be >= 1, got 0"));
}

}  // namespace
}  // namespace attnkit

namespace attnkit {
namespace {

// The effective mixing matrix: causal, and it reproduces the rule's output from the values.
TEST(GatedDeltaNet, AuxWeightsAreTheCausalMixingMatrix) {
  torch::manual_seed(11);
  GatedDeltaNet gdn(GatedDeltaNetOptions(32, 2, 4));
  torch::Tensor x = torch::randn({2, 9, 32});
  torch::NoGradGuard no_grad;
  AttentionOutput aux = gdn->forward_with_aux(x);
  EXPECT_TRUE(torch::allclose(aux.output, gdn(x), 1e-6, 1e-6));
  ASSERT_EQ(aux.attn_weights.sizes(), torch::IntArrayRef({2, 4, 9, 9}));
  EXPECT_EQ(aux.attn_weights.triu(1).abs().max().item<float>(), 0.0f);
  torch::Tensor past = torch::ones({9, 9}, torch::kBool).tril().expand({2, 4, 9, 9});
  EXPECT_GT(aux.attn_weights.masked_select(past).abs().min().item<float>(), 0.0f)
      << "every past value counts";

  // Linearity in v: the rule on identity values, times v, equals the rule on v.
  const int64_t B = 1, Hqk = 2, Hv = 4, T = 70, dk = 8, dv = 5;
  torch::Tensor q = torch::randn({B, Hqk, T, dk}),
                k = torch::nn::functional::normalize(
                    torch::randn({B, Hqk, T, dk}),
                    torch::nn::functional::NormalizeFuncOptions().dim(-1));
  torch::Tensor v = torch::randn({B, Hv, T, dv});
  torch::Tensor g = -torch::rand({B, Hv, T}), beta = torch::rand({B, Hv, T});
  torch::Tensor a = gated_delta_rule(q, k, torch::eye(T).expand({B, Hv, T, T}), g, beta).output;
  torch::Tensor o = gated_delta_rule(q, k, v, g, beta).output;
  EXPECT_TRUE(torch::allclose(torch::matmul(a, v), o, 1e-4, 1e-4));
}

}  // namespace
}  // namespace attnkit
