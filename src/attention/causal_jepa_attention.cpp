#include <attnkit/attention/causal_jepa_attention.h>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>

#include <cmath>

namespace attnkit {

namespace {
constexpr const char* kName = "CausalJEPAAttention";

// Truncated normal on [a, b] by inverse CDF (as torch.nn.init.trunc_normal_): one uniform draw
// per element, so it consumes the RNG like the Python initialiser.
void trunc_normal_(torch::Tensor& t, double mean, double std, double a, double b) {
  torch::NoGradGuard no_grad;
  auto cdf = [](double x) { return (1.0 + std::erf(x / std::sqrt(2.0))) / 2.0; };
  const double lo = cdf((a - mean) / std), hi = cdf((b - mean) / std);
  t.uniform_(2 * lo - 1, 2 * hi - 1);
  t.erfinv_();
  t.mul_(std * std::sqrt(2.0));
  t.add_(mean);
  t.clamp_(a, b);
}

void check_mask_slots(const char* fn, const torch::Tensor& mask_slots, int64_t num_slots) {
  TORCH_CHECK(mask_slots.dim() == 1, fn, ": expected mask_slots of shape [num_masked], got ",
              mask_slots.sizes());
  TORCH_CHECK(!mask_slots.is_floating_point() && !mask_slots.is_complex() &&
                  mask_slots.scalar_type() != torch::kBool,
              fn, ": expected mask_slots of an integer dtype (object indices), got ",
              mask_slots.scalar_type());
  if (mask_slots.numel() > 0) {
    const int64_t lo = mask_slots.min().item<int64_t>(), hi = mask_slots.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_slots, fn, ": mask_slots must index objects in [0, ", num_slots,
                "), got values in [", lo, ", ", hi, "]");
  }
}
}  // namespace

// --- CausalJEPABlock

CausalJEPABlockImpl::CausalJEPABlockImpl(
    int64_t dim, int64_t num_heads, int64_t mlp_dim, double dropout, bool bias)
    : dim_(dim), num_heads_(num_heads), mlp_dim_(mlp_dim), dropout_(dropout), bias_(bias) {
  reset();
}

void CausalJEPABlockImpl::reset() {
  attn = register_module(
      "attn",
      StandardAttention(StandardAttentionOptions(dim_, num_heads_).dropout(dropout_).bias(bias_)));
  mlp = register_module(
      "mlp",
      torch::nn::Sequential(torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim_})),
                            torch::nn::Linear(torch::nn::LinearOptions(dim_, mlp_dim_).bias(bias_)),
                            torch::nn::GELU(), torch::nn::Dropout(dropout_),
                            torch::nn::Linear(torch::nn::LinearOptions(mlp_dim_, dim_).bias(bias_)),
                            torch::nn::Dropout(dropout_)));
}

void CausalJEPABlockImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::CausalJEPABlock(dim=" << dim_ << ", num_heads=" << num_heads_
         << ", mlp_dim=" << mlp_dim_ << ", dropout=" << dropout_
         << ", bias=" << (bias_ ? "true" : "false") << ")";
}

torch::Tensor CausalJEPABlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = x + attn(x);
  return y + mlp->forward(y);
}

// --- CausalJEPAAttention

CausalJEPAAttentionOptions::CausalJEPAAttentionOptions(int64_t dim,
                                                       int64_t num_heads,
                                                       int64_t num_slots,
                                                       int64_t history_frames)
    : dim_(dim), num_heads_(num_heads), num_slots_(num_slots), history_frames_(history_frames) {}

CausalJEPAAttentionImpl::CausalJEPAAttentionImpl(CausalJEPAAttentionOptions options_)
    : options(std::move(options_)) {
  auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_heads() > 0, kName, ": num_heads must be positive, got ", o.num_heads());
  TORCH_CHECK(o.dim() % o.num_heads() == 0, kName, ": dim (", o.dim(),
              ") must be divisible by num_heads (", o.num_heads(), ")");
  TORCH_CHECK(o.num_slots() > 0, kName, ": num_slots must be positive, got ", o.num_slots());
  TORCH_CHECK(o.history_frames() > 0, kName, ": history_frames must be positive, got ",
              o.history_frames());
  TORCH_CHECK(o.pred_frames() > 0, kName, ": pred_frames must be positive, got ", o.pred_frames());
  TORCH_CHECK(o.num_masked_slots() >= 0 && o.num_masked_slots() <= o.num_slots(), kName,
              ": num_masked_slots must be in [0, num_slots (", o.num_slots(), ")], got ",
              o.num_masked_slots());
  TORCH_CHECK(o.depth() >= 0, kName, ": depth must be >= 0, got ", o.depth());
  TORCH_CHECK(o.mlp_dim() >= 0, kName, ": mlp_dim must be >= 0 (0 = 4 * dim), got ", o.mlp_dim());
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, kName, ": dropout must be in [0, 1), got ",
              o.dropout());
  if (o.mlp_dim() == 0) o.mlp_dim(4 * o.dim());
  reset();
}

CausalJEPAAttentionImpl::CausalJEPAAttentionImpl(int64_t dim,
                                                 int64_t num_heads,
                                                 int64_t num_slots,
                                                 int64_t history_frames)
    : CausalJEPAAttentionImpl(
          CausalJEPAAttentionOptions(dim, num_heads, num_slots, history_frames)) {}

void CausalJEPAAttentionImpl::reset() {
  const auto& o = options;
  const int64_t D = o.dim(), total = o.history_frames() + o.pred_frames();
  mask_token = register_parameter("mask_token", torch::zeros({1, 1, 1, D}));
  time_pos = register_parameter("time_pos", torch::zeros({1, total, 1, D}));
  id_proj =
      register_module("id_proj", torch::nn::Linear(torch::nn::LinearOptions(D, D).bias(o.bias())));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth(); ++i) {
    blocks->push_back(CausalJEPABlock(D, o.num_heads(), o.mlp_dim(), o.dropout(), o.bias()));
  }
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  to_out =
      register_module("to_out", torch::nn::Linear(torch::nn::LinearOptions(D, D).bias(o.bias())));
  trunc_normal_(mask_token, 0.0, 0.02, -2.0, 2.0);
  trunc_normal_(time_pos, 0.0, 0.02, -2.0, 2.0);
}

void CausalJEPAAttentionImpl::reset_parameters() {
  trunc_normal_(mask_token, 0.0, 0.02, -2.0, 2.0);
  trunc_normal_(time_pos, 0.0, 0.02, -2.0, 2.0);
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* linear = module->as<torch::nn::Linear>()) linear->reset_parameters();
    if (auto* layer_norm = module->as<torch::nn::LayerNorm>()) layer_norm->reset_parameters();
  }
}

void CausalJEPAAttentionImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "attnkit::CausalJEPAAttention(dim=" << o.dim() << ", num_heads=" << o.num_heads()
         << ", num_slots=" << o.num_slots() << ", history_frames=" << o.history_frames()
         << ", pred_frames=" << o.pred_frames() << ", num_masked_slots=" << o.num_masked_slots()
         << ", depth=" << o.depth() << ", mlp_dim=" << o.mlp_dim() << ", dropout=" << o.dropout()
         << ", bias=" << (o.bias() ? "true" : "false") << ")";
}

void CausalJEPAAttentionImpl::check_slots(const torch::Tensor& slots) const {
  const auto& o = options;
  TORCH_CHECK(slots.defined(), kName, ": slots are undefined");
  TORCH_CHECK(slots.dim() == 4 && slots.size(1) == o.history_frames() &&
                  slots.size(2) == o.num_slots() && slots.size(3) == o.dim(),
              kName, ": expected slots of shape [B, history_frames, num_slots, dim] = [B, ",
              o.history_frames(), ", ", o.num_slots(), ", ", o.dim(), "], got ", slots.sizes());
  TORCH_CHECK(slots.is_floating_point(), kName, ": expected floating-point slots, got dtype ",
              slots.scalar_type());
  TORCH_CHECK(slots.scalar_type() == mask_token.scalar_type(), kName, ": slots have dtype ",
              slots.scalar_type(), " but the parameters are ", mask_token.scalar_type(),
              "; move the module with ->to(", slots.scalar_type(), ")");
}

torch::Tensor CausalJEPAAttentionImpl::run(const torch::Tensor& slots,
                                           const torch::Tensor& visible) {
  const int64_t B = slots.size(0), Th = options.history_frames(), S = options.num_slots();
  const int64_t D = options.dim(), total = Th + options.pred_frames();
  // Hidden positions: mask token + time + the object's identity anchor (its frame-0 slot).
  torch::Tensor anchor = id_proj(slots.select(1, 0)).unsqueeze(1);  // [B, 1, S, D]
  torch::Tensor hidden = mask_token + time_pos + anchor;            // [B, total, S, D]
  // Real positions: the observed slot + time, the future padded (never selected).
  torch::Tensor real = torch::cat(
      {slots + time_pos.narrow(1, 0, Th), torch::zeros({B, total - Th, S, D}, slots.options())}, 1);
  torch::Tensor use_real =
      torch::cat({visible, torch::zeros({total - Th, S}, visible.options())}, 0);  // [total, S]
  torch::Tensor x = torch::where(use_real.view({1, total, S, 1}), real, hidden);
  x = x.reshape({B, total * S, D});
  for (const auto& block : *blocks) x = block->as<CausalJEPABlock>()->forward(x);
  return to_out(norm(x).view({B, total, S, D}));
}

CausalJEPAOutput CausalJEPAAttentionImpl::forward(const torch::Tensor& slots,
                                                  const torch::Tensor& mask_slots) {
  check_slots(slots);
  const int64_t S = options.num_slots(), Th = options.history_frames();
  torch::Tensor hide = mask_slots;
  if (!hide.defined()) {
    hide = torch::randperm(S, torch::TensorOptions().dtype(torch::kLong).device(slots.device()))
               .narrow(0, 0, options.num_masked_slots());
  }
  check_mask_slots(kName, hide, S);
  hide = hide.to(torch::kLong);
  auto bool_opts = torch::TensorOptions().dtype(torch::kBool).device(slots.device());
  torch::Tensor visible_object =
      torch::ones({S}, bool_opts).index_fill(0, hide.to(slots.device()), false);
  // Frame 0 is always real; frames 1 .. Th-1 are real for the visible objects.
  torch::Tensor visible = visible_object.unsqueeze(0).repeat({Th, 1});
  visible[0].fill_(true);
  return CausalJEPAOutput{run(slots, visible), hide};
}

torch::Tensor CausalJEPAAttentionImpl::predict(const torch::Tensor& slots) {
  check_slots(slots);
  const int64_t Th = options.history_frames();
  torch::Tensor visible = torch::ones(
      {Th, options.num_slots()}, torch::TensorOptions().dtype(torch::kBool).device(slots.device()));
  return run(slots, visible).narrow(1, Th, options.pred_frames());
}

torch::Tensor cjepa_masked_loss(const torch::Tensor& pred,
                                const torch::Tensor& target,
                                const torch::Tensor& mask_slots,
                                int64_t history_frames) {
  constexpr const char* fn = "cjepa_masked_loss";
  TORCH_CHECK(pred.defined() && pred.dim() == 4, fn,
              ": expected pred of shape [B, frames, num_slots, dim], got ",
              pred.defined() ? pred.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(target.defined() && target.sizes() == pred.sizes(), fn,
              ": expected target of the shape of pred ", pred.sizes(), ", got ",
              target.defined() ? target.sizes() : torch::IntArrayRef{});
  const int64_t total = pred.size(1), S = pred.size(2);
  TORCH_CHECK(history_frames >= 1 && history_frames <= total, fn,
              ": history_frames must be in [1, frames (", total, ")], got ", history_frames);
  check_mask_slots(fn, mask_slots, S);
  const torch::Tensor hide = mask_slots.to(pred.device(), torch::kLong);
  auto bool_opts = torch::TensorOptions().dtype(torch::kBool).device(pred.device());
  torch::Tensor scored = torch::zeros({total, S}, bool_opts);
  scored.narrow(0, history_frames, total - history_frames).fill_(true);
  if (history_frames > 1 && hide.numel() > 0) {
    scored.narrow(0, 1, history_frames - 1).index_fill_(1, hide, true);
  }
  const int64_t count = scored.sum().item<int64_t>();
  TORCH_CHECK(count > 0, fn,
              ": no position to score (no future frame and no hidden object in frames 1 .. ",
              history_frames - 1, ")");
  torch::Tensor err = (pred - target).pow(2).mean(-1);  // [B, frames, S]
  return (err * scored).sum() / static_cast<double>(pred.size(0) * count);
}

}  // namespace attnkit
