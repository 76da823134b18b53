#include <attnkit/attention/differential_attention.h>

#include <attnkit/core/rms_norm.h>
#include <attnkit/functional/dot_product_attention.h>

#include "attention/dense_common.h"
#include "attention/zoo_common.h"

#include <cmath>

namespace attnkit {

namespace {
constexpr const char* kName = "DifferentialAttention";
constexpr double kHeadNormEps = 1e-5;

// A per-head [B, H, Tq, Tk] mask or bias applies to both sub-heads: repeat it to 2H heads.
torch::Tensor to_sub_heads(const torch::Tensor& t, int64_t num_heads) {
  if (!t.defined() || t.dim() != 4 || t.size(1) == 1) return t;
  TORCH_INTERNAL_ASSERT(t.size(1) == num_heads);
  return t.repeat_interleave(2, /*dim=*/1);
}
}  // namespace

double lambda_init(int64_t depth) {
  TORCH_CHECK(depth >= 0, "lambda_init: depth must be >= 0 (zero-based layer index), got ", depth);
  return 0.8 - 0.6 * std::exp(-0.3 * static_cast<double>(depth));
}

DifferentialAttentionOptions::DifferentialAttentionOptions(int64_t dim, int64_t num_heads)
    : dim_(dim), num_heads_(num_heads) {}

DifferentialAttentionImpl::DifferentialAttentionImpl(DifferentialAttentionOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, kName, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.dim() % (2 * o.num_heads()) == 0, kName, ": dim (", o.dim(),
              ") must be divisible by 2 * num_heads (", 2 * o.num_heads(), ")");
  TORCH_CHECK(o.depth() >= 0, kName, ": depth must be >= 0 (zero-based layer index), got ",
              o.depth());
  reset();
}

DifferentialAttentionImpl::DifferentialAttentionImpl(int64_t dim, int64_t num_heads)
    : DifferentialAttentionImpl(DifferentialAttentionOptions(dim, num_heads)) {}

void DifferentialAttentionImpl::reset() {
  const int64_t D = options.dim(), hd = D / (2 * options.num_heads());
  detail::register_zoo_layers(*this, D, options.bias(), q_proj, k_proj, v_proj, o_proj);
  head_norm = register_parameter("head_norm", torch::ones({2 * hd}));
  lambda_q1 = register_parameter("lambda_q1", torch::empty({hd}));
  lambda_k1 = register_parameter("lambda_k1", torch::empty({hd}));
  lambda_q2 = register_parameter("lambda_q2", torch::empty({hd}));
  lambda_k2 = register_parameter("lambda_k2", torch::empty({hd}));
  reset_parameters();
}

void DifferentialAttentionImpl::reset_parameters() {
  detail::reset_linears({q_proj, k_proj, v_proj, o_proj});
  torch::NoGradGuard no_grad;
  head_norm.fill_(1.0);
  for (auto* p : {&lambda_q1, &lambda_k1, &lambda_q2, &lambda_k2}) p->normal_(0.0, 0.1);
}

void DifferentialAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::DifferentialAttention(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ", depth=" << options.depth()
         << ", causal=" << detail::str(options.causal()) << ", bias=" << detail::str(options.bias())
         << ")";
}

torch::Tensor DifferentialAttentionImpl::lambda() const {
  return torch::exp((lambda_q1 * lambda_k1).sum()) - torch::exp((lambda_q2 * lambda_k2).sum()) +
         lambda_init_value();
}

AttentionOutput DifferentialAttentionImpl::run(const torch::Tensor& x,
                                               const torch::Tensor& attn_mask,
                                               DecodeState* state,
                                               bool need_weights) {
  detail::check_sequence_input(kName, x, options.dim(), q_proj->weight);
  if (state) check_state(*state, x);
  const int64_t B = x.size(0), T = x.size(1), H = options.num_heads();
  const int64_t hd = options.dim() / (2 * H);

  // q, k: 2H sub-heads of width hd; v: H heads of width 2hd.
  torch::Tensor q = q_proj(x).view({B, T, 2 * H, hd}).transpose(1, 2);  // [B, 2H, T, hd]
  torch::Tensor k = k_proj(x).view({B, T, 2 * H, hd}).transpose(1, 2);  // [B, 2H, T, hd]
  torch::Tensor v = v_proj(x).view({B, T, H, 2 * hd}).transpose(1, 2);  // [B, H, T, 2hd]
  if (state) {
    k = state->append("k", k, 2);  // [B, 2H, L, hd]
    v = state->append("v", v, 2);  // [B, H, L, 2hd]
    state->advance(T);
  }

  DotProductAttentionOptions attn;
  attn.scale(1.0 / std::sqrt(static_cast<double>(hd)))
      .causal(options.causal())
      .need_weights(need_weights);
  detail::add_attn_mask(kName, attn_mask, B, H, T, attn);
  attn.mask(to_sub_heads(attn.mask(), H)).bias(to_sub_heads(attn.bias(), H));

  // Sub-heads 2i and 2i+1 both read value head i, so (A_2i - lambda A_2i+1) v_i is the
  // difference of two ordinary attention outputs; this keeps the fused attention call.
  torch::Tensor v_sub = v.repeat_interleave(2, /*dim=*/1);  // [B, 2H, L, 2hd]
  AttentionResult r = functional::dot_product_attention(q, k, v_sub, attn);
  const double init = lambda_init_value();
  torch::Tensor lam = lambda().to(x.scalar_type());
  torch::Tensor pair = r.output.view({B, H, 2, T, 2 * hd});
  torch::Tensor out = pair.select(2, 0) - lam * pair.select(2, 1);  // [B, H, T, 2hd]
  out = rms_norm(out, head_norm, kHeadNormEps) * (1.0 - init);
  out = out.transpose(1, 2).reshape({B, T, options.dim()});

  AttentionOutput result{o_proj(out), torch::Tensor()};
  if (need_weights) {
    torch::Tensor w = r.weights.view({B, H, 2, T, r.weights.size(-1)});
    result.attn_weights = w.select(2, 0) - lam * w.select(2, 1);
  }
  return result;
}

torch::Tensor DifferentialAttentionImpl::forward(const torch::Tensor& x) {
  return run(x, {}, nullptr, false).output;
}

torch::Tensor DifferentialAttentionImpl::forward(const torch::Tensor& x,
                                                 const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, false).output;
}

torch::Tensor DifferentialAttentionImpl::forward(const torch::Tensor& x, DecodeState& state) {
  return run(x, {}, &state, false).output;
}

DecodeState DifferentialAttentionImpl::init_state(int64_t batch_size) const {
  return new_state(batch_size);
}

AttentionOutput DifferentialAttentionImpl::forward_with_aux(const torch::Tensor& x,
                                                            const torch::Tensor& attn_mask) {
  return run(x, attn_mask, nullptr, true);
}

}  // namespace attnkit
