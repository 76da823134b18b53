#include <attnkit/sparse/sampling_maskers.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <numbers>
#include <vector>

namespace attnkit {
namespace sparse {

namespace {

torch::Dtype compute_dtype(const torch::Tensor& x) {
  return x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// 2^j for j < k, the weight of bit j of a table (2^63 wraps to the lowest int64, which keeps
// the packing one-to-one, and sums of distinct bits never overflow).
torch::Tensor bit_weights(int64_t k, torch::Device device) {
  std::vector<int64_t> w(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) w[static_cast<size_t>(j)] = static_cast<int64_t>(uint64_t{1} << j);
  return torch::tensor(w, torch::kLong).to(device);
}

}  // namespace

MagicPigMasker::MagicPigMasker(MagicPigMaskerOptions options) : options_(std::move(options)) {
  TORCH_CHECK(options_.lsh_l() > 0, "MagicPigMasker: lsh_l must be > 0, got ", options_.lsh_l());
  TORCH_CHECK(options_.lsh_k() > 0, "MagicPigMasker: lsh_k must be > 0, got ", options_.lsh_k());
  TORCH_CHECK(options_.packing() == "int64" || options_.packing() == "float32",
              "MagicPigMasker: packing must be \"int64\" or \"float32\", got \"",
              options_.packing(), "\"");
  TORCH_CHECK(options_.packing() != "int64" || options_.lsh_k() <= 64,
              "MagicPigMasker: lsh_k must be <= 64 with \"int64\" packing, got ",
              options_.lsh_k());
}

MaskerPtr MagicPigMasker::from_config(const MaskerConfig& config) {
  MagicPigMaskerOptions options(config.integer("lsh_l"), config.integer("lsh_k"));
  options.center(config.boolean("center", true))
      .packing(config.string("packing", "int64"))
      .seed(config.integer("seed", 42));
  return std::make_shared<MagicPigMasker>(std::move(options));
}

MagicPigMasker::MipsVectors MagicPigMasker::transform_for_mips(const torch::Tensor& keys,
                                                               const torch::Tensor& queries) {
  auto q_norm = queries.norm(2, {-1}, /*keepdim=*/true);
  auto q_hat = torch::cat({queries / (q_norm + 1e-8), torch::zeros_like(queries.narrow(-1, 0, 1))},
                          -1);
  auto k_norm = keys.norm(2, {-1}, /*keepdim=*/true);
  auto m = k_norm.max();
  // All keys zero (upstream divides 0 by 0): k^ = [0, 1], orthogonal to every query.
  m = torch::where(m > 0, m, torch::ones_like(m));
  auto k_hat = torch::cat({keys / m, (m.pow(2) - k_norm.pow(2)).sqrt() / m}, -1);
  return {k_hat, q_hat};
}

torch::Tensor MagicPigMasker::collision_probability(const MipsVectors& x) const {
  auto k = x.keys / (x.keys.norm(2, {-1}, true) + 1e-8);
  auto q = x.queries / (x.queries.norm(2, {-1}, true) + 1e-8);
  auto theta = torch::matmul(q, k.transpose(-2, -1)).clamp(-1.0, 1.0).acos();
  auto single_table = (1 - theta / std::numbers::pi).pow(options_.lsh_k());
  return 1 - (1 - single_table).pow(options_.lsh_l());
}

torch::Tensor MagicPigMasker::projection(int64_t layer, int64_t dim, torch::Dtype dtype) const {
  // A generator of its own (as upstream's torch.Generator().manual_seed(seed + layer)): the
  // projections do not depend on, nor advance, the global generator.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(
      static_cast<uint64_t>(options_.seed() + layer));
  return torch::randn({dim, options_.lsh_l() * options_.lsh_k()}, gen,
                      torch::TensorOptions().dtype(dtype));
}

torch::Tensor MagicPigMasker::signatures(const torch::Tensor& vectors,
                                         const torch::Tensor& projection) const {
  const int64_t L = options_.lsh_l(), K = options_.lsh_k();
  TORCH_CHECK(vectors.dim() == 4 && projection.dim() == 2 &&
                  projection.size(0) == vectors.size(3) && projection.size(1) == L * K,
              "MagicPigMasker: signatures need vectors [B, H, T, D + 1] and a projection [D + 1, ",
              L * K, "], got ", vectors.sizes(), " and ", projection.sizes());
  auto signs = torch::matmul(vectors, projection.to(vectors.scalar_type())).sign();
  if (options_.packing() == "float32") return signs.to(torch::kFloat);
  auto bits = signs.gt(0).to(torch::kLong).view({vectors.size(0), vectors.size(1),
                                                 vectors.size(2), L, K});
  return (bits * bit_weights(K, vectors.device())).sum(-1);
}

torch::Tensor MagicPigMasker::matches(const torch::Tensor& key_signatures,
                                      const torch::Tensor& query_signatures) const {
  const int64_t L = options_.lsh_l(), K = options_.lsh_k();
  const bool packed = options_.packing() == "int64";
  const int64_t width = packed ? L : L * K;
  TORCH_CHECK(key_signatures.dim() == 4 && query_signatures.dim() == 4 &&
                  key_signatures.size(3) == width && query_signatures.size(3) == width,
              "MagicPigMasker: matches need signatures [B, H, T, ", width, "], got ",
              key_signatures.sizes(), " and ", query_signatures.sizes());
  // One table at a time, so memory stays O(Tq * Tk) rather than O(Tq * Tk * L).
  auto any = torch::zeros({query_signatures.size(0), query_signatures.size(1),
                           query_signatures.size(2), key_signatures.size(2)},
                          query_signatures.options().dtype(torch::kBool));
  for (int64_t t = 0; t < L; ++t) {
    torch::Tensor agree;
    if (packed) {
      agree = query_signatures.select(-1, t).unsqueeze(-1) ==
              key_signatures.select(-1, t).unsqueeze(-2);
    } else {
      // Products of +-1 signs sum to K exactly when all K bits agree (a 0 sign never matches).
      auto q = query_signatures.narrow(-1, t * K, K);
      auto k = key_signatures.narrow(-1, t * K, K);
      agree = torch::matmul(q, k.transpose(-2, -1)) == static_cast<double>(K);
    }
    any.logical_or_(agree);
  }
  return any;
}

torch::Tensor MagicPigMasker::cached_key_mean(const MaskerInputs& in,
                                              const torch::Tensor& keys) const {
  const int64_t layer = *in.layer_idx;
  torch::Tensor mean = in.state->get(kKeyMean, layer);
  if (!mean.defined()) {
    // Upstream caches the mean of the first call's keys and reuses it for later calls.
    mean = keys.mean(2, /*keepdim=*/true);
    in.state->set(kKeyMean, layer, mean);
  }
  TORCH_CHECK(mean.dim() == 4 && mean.size(0) == in.batch && mean.size(1) == in.heads &&
                  mean.size(2) == 1 && mean.size(3) == keys.size(3),
              "MagicPigMasker: the cached key mean of layer ", layer, " has shape ", mean.sizes(),
              ", expected [", in.batch, ", ", in.heads, ", 1, ", keys.size(3),
              "] (start a new MaskerState for a new sequence)");
  return mean.to(keys.device(), keys.scalar_type());
}

torch::Tensor MagicPigMasker::cached_projection(const MaskerInputs& in,
                                                int64_t dim,
                                                torch::Dtype dtype) const {
  const int64_t layer = *in.layer_idx;
  torch::Tensor r = in.state->get(kProjections, layer);
  if (!r.defined()) {
    r = projection(layer, dim, dtype).to(in.queries.device());
    in.state->set(kProjections, layer, r);
  }
  const int64_t bits = options_.lsh_l() * options_.lsh_k();
  TORCH_CHECK(r.dim() == 2 && r.size(0) == dim && r.size(1) == bits,
              "MagicPigMasker: the cached projections of layer ", layer, " have shape ",
              r.sizes(), ", expected [", dim, ", ", bits, "]");
  return r.to(in.queries.device(), dtype);
}

torch::Tensor MagicPigMasker::cached_key_signatures(const MaskerInputs& in,
                                                    const torch::Tensor& keys_hat,
                                                    const torch::Tensor& projection) const {
  const int64_t layer = *in.layer_idx;
  torch::Tensor cached = in.state->get(kKeySignatures, layer);
  if (!cached.defined()) {
    auto sigs = signatures(keys_hat, projection);
    in.state->set(kKeySignatures, layer, sigs);
    return sigs;
  }
  const int64_t width = options_.packing() == "int64" ? options_.lsh_l()
                                                      : options_.lsh_l() * options_.lsh_k();
  TORCH_CHECK(cached.dim() == 4 && cached.size(0) == in.batch && cached.size(1) == in.heads &&
                  cached.size(3) == width,
              "MagicPigMasker: the cached key signatures of layer ", layer, " have shape ",
              cached.sizes(), ", expected [", in.batch, ", ", in.heads, ", Tk, ", width,
              "] (start a new MaskerState for a new sequence)");
  const int64_t have = cached.size(2);
  TORCH_CHECK(in.k_len >= have, "MagicPigMasker: layer ", layer, " has ", have,
              " cached key signatures but the call has only ", in.k_len,
              " keys (start a new MaskerState for a new sequence)");
  if (in.k_len == have) return cached;
  // Only the keys added since the last call are hashed (upstream: with this call's transform).
  auto fresh = signatures(keys_hat.narrow(2, have, in.k_len - have), projection);
  auto all = torch::cat({cached.to(fresh.device()), fresh}, 2);
  in.state->set(kKeySignatures, layer, all);
  return all;
}

Mask MagicPigMasker::compute(const MaskerInputs& in, const Mask& previous) const {
  in.layer("magic_pig");  // raises without layer_idx
  if (in.k_len == 0) return previous;
  const auto dtype = compute_dtype(in.queries);
  auto keys = in.keys_per_head().to(dtype);
  auto queries = in.queries.to(dtype);
  if (options_.center()) {
    auto mean = cached_key_mean(in, keys);
    keys = keys - mean;
    queries = queries - mean;
  }
  MipsVectors x = transform_for_mips(keys, queries);
  auto p = collision_probability(x);
  auto r = cached_projection(in, x.keys.size(3), dtype);
  auto found = matches(cached_key_signatures(in, x.keys, r), signatures(x.queries, r));
  // Upstream's dense mask match * p: a matched key weighs its collision probability.
  Mask added = Mask::from_dense(in.mask_shape(), p * found.to(p.scalar_type()), previous.dtype());
  return previous.is_empty() ? added : previous.merge(added);
}

}  // namespace sparse
}  // namespace attnkit
