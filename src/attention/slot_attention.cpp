#include <attnkit/attention/slot_attention.h>

#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>

#include <algorithm>
#include <cmath>

namespace attnkit {

namespace {
constexpr const char* kName = "SlotAttention";
}

SlotAttentionOptions::SlotAttentionOptions(int64_t dim, int64_t num_slots)
    : dim_(dim), num_slots_(num_slots) {}

SlotAttentionImpl::SlotAttentionImpl(SlotAttentionOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK(o.dim() > 0, kName, ": dim must be positive, got ", o.dim());
  TORCH_CHECK(o.num_slots() > 0, kName, ": num_slots must be positive, got ", o.num_slots());
  TORCH_CHECK(o.num_iters() > 0, kName, ": num_iters must be positive, got ", o.num_iters());
  TORCH_CHECK(o.hidden_dim() > 0, kName, ": hidden_dim must be positive, got ", o.hidden_dim());
  TORCH_CHECK(o.eps() >= 0, kName, ": eps must be >= 0, got ", o.eps());
  reset();
}

SlotAttentionImpl::SlotAttentionImpl(int64_t dim, int64_t num_slots)
    : SlotAttentionImpl(SlotAttentionOptions(dim, num_slots)) {}

void SlotAttentionImpl::reset() {
  const int64_t D = options.dim(), hidden = std::max(options.dim(), options.hidden_dim());
  slot_mu = register_parameter("slot_mu", torch::empty({1, 1, D}));
  slot_log_sigma = register_parameter("slot_log_sigma", torch::empty({1, 1, D}));
  to_q = register_module("to_q", torch::nn::Linear(D, D));
  to_k = register_module("to_k", torch::nn::Linear(D, D));
  to_v = register_module("to_v", torch::nn::Linear(D, D));
  gru = register_module("gru", torch::nn::GRUCell(D, D));
  mlp =
      register_module("mlp", torch::nn::Sequential(torch::nn::Linear(D, hidden), torch::nn::ReLU(),
                                                   torch::nn::Linear(hidden, D)));
  auto layer_norm = [&]() { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})); };
  norm_input = register_module("norm_input", layer_norm());
  norm_slots = register_module("norm_slots", layer_norm());
  norm_pre_mlp = register_module("norm_pre_mlp", layer_norm());
  reset_parameters();
}

void SlotAttentionImpl::reset_parameters() {
  {
    torch::NoGradGuard no_grad;
    slot_mu.normal_();
  }
  torch::nn::init::xavier_uniform_(slot_log_sigma);
  for (auto* linear : {to_q.get(), to_k.get(), to_v.get()}) linear->reset_parameters();
  gru->reset_parameters();
  for (const auto& child : mlp->children()) {
    if (auto* linear = child->as<torch::nn::Linear>()) linear->reset_parameters();
  }
  for (auto* norm : {norm_input.get(), norm_slots.get(), norm_pre_mlp.get()}) {
    norm->reset_parameters();
  }
}

void SlotAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "attnkit::SlotAttention(dim=" << options.dim() << ", num_slots=" << options.num_slots()
         << ", num_iters=" << options.num_iters() << ", hidden_dim=" << options.hidden_dim()
         << ", eps=" << options.eps() << ")";
}

torch::Tensor SlotAttentionImpl::forward(const torch::Tensor& inputs,
                                         std::optional<at::Generator> generator) {
  const int64_t D = options.dim(), S = options.num_slots();
  TORCH_CHECK(inputs.defined(), kName, ": inputs are undefined");
  TORCH_CHECK(inputs.dim() == 3, kName,
              ": expected inputs of shape [batch, num_inputs, dim] (3-D), got ", inputs.dim(),
              "-D shape ", inputs.sizes());
  TORCH_CHECK(inputs.size(2) == D, kName, ": expected inputs.size(-1) == dim (", D, "), got ",
              inputs.size(2));
  TORCH_CHECK(inputs.is_floating_point(), kName, ": expected floating-point inputs, got dtype ",
              inputs.scalar_type());
  TORCH_CHECK(inputs.scalar_type() == slot_mu.scalar_type(), kName, ": inputs have dtype ",
              inputs.scalar_type(), " but the parameters are ", slot_mu.scalar_type(),
              "; move the module with ->to(", inputs.scalar_type(), ")");
  const int64_t B = inputs.size(0);

  // slots <- mu + sigma * noise: [B, S, D]
  // Drawn on the generator's device, so a CPU generator gives the same slots on every device.
  const torch::Device draw_on = generator ? generator->device() : inputs.device();
  torch::Tensor noise =
      torch::randn({B, S, D}, generator, inputs.options().device(draw_on)).to(inputs.device());
  torch::Tensor slots = slot_mu + slot_log_sigma.exp() * noise;

  torch::Tensor x = norm_input(inputs);
  torch::Tensor k = to_k(x);  // [B, N, D]
  torch::Tensor v = to_v(x);  // [B, N, D]
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t it = 0; it < options.num_iters(); ++it) {
    torch::Tensor prev = slots;
    torch::Tensor q = to_q(norm_slots(slots)) * scale;         // [B, S, D]
    torch::Tensor dots = torch::matmul(q, k.transpose(1, 2));  // [B, S, N]
    // Slots compete for each input (softmax over S), then each slot takes the weighted mean of
    // the inputs it won.
    torch::Tensor attn = torch::softmax(dots, /*dim=*/1) + options.eps();
    attn = attn / attn.sum(-1, /*keepdim=*/true);
    torch::Tensor updates = torch::matmul(attn, v);  // [B, S, D]
    slots = gru(updates.reshape({B * S, D}), prev.reshape({B * S, D})).view({B, S, D});
    slots = slots + mlp->forward(norm_pre_mlp(slots));
  }
  return slots;
}

}  // namespace attnkit
