#include <attnkit/core/decode_state.h>

#include <algorithm>

namespace attnkit {

DecodeState::DecodeState(const void* owner, std::string mechanism, int64_t batch_size)
    : owner_(owner), mechanism_(std::move(mechanism)), batch_size_(batch_size) {
  TORCH_CHECK(batch_size > 0, mechanism_, ": init_state batch_size must be positive, got ",
              batch_size);
}

void DecodeState::check(const void* owner, const std::string& mechanism, int64_t batch_size) const {
  TORCH_CHECK(owner_ != nullptr, mechanism,
              ": decode state is empty; create it with this module's init_state(batch_size)");
  TORCH_CHECK(owner_ == owner, mechanism, ": decode state belongs to another module (made by ",
              mechanism_, "); create it with this module's init_state(batch_size)");
  TORCH_CHECK(batch_size_ == batch_size, mechanism, ": decode state was made for batch size ",
              batch_size_, ", got input with batch size ", batch_size);
}

torch::Tensor DecodeState::append(const std::string& name,
                                  const torch::Tensor& chunk,
                                  int64_t dim) {
  dim = dim < 0 ? dim + chunk.dim() : dim;
  const int64_t n = chunk.size(dim);
  const int64_t needed = length_ + n;
  Entry& entry = entries_[name];
  if (entry.storage.defined()) {
    TORCH_CHECK(entry.dim == dim, mechanism_, ": cache '", name, "' grows along dim ", entry.dim,
                ", got dim ", dim);
    TORCH_CHECK(entry.storage.scalar_type() == chunk.scalar_type(), mechanism_, ": cache '", name,
                "' holds ", entry.storage.scalar_type(), ", got ", chunk.scalar_type(),
                " (move the module before init_state)");
  }
  if (!entry.storage.defined() || entry.storage.size(dim) < needed) {
    // Grow geometrically (at least 16 positions) and copy the valid prefix.
    const int64_t old_capacity = entry.storage.defined() ? entry.storage.size(dim) : 0;
    const int64_t capacity = std::max<int64_t>({needed, 2 * old_capacity, 16});
    auto shape = chunk.sizes().vec();
    shape[dim] = capacity;
    torch::Tensor grown = torch::empty(shape, chunk.options());
    if (length_ > 0) grown.narrow(dim, 0, length_).copy_(entry.storage.narrow(dim, 0, length_));
    entry.storage = grown;
    entry.dim = dim;
  }
  // The cache holds data, not graph: decoding is inference.
  entry.storage.narrow(dim, length_, n).copy_(chunk.detach());
  return entry.storage.narrow(dim, 0, needed);
}

torch::Tensor DecodeState::get(const std::string& name) const {
  auto it = entries_.find(name);
  TORCH_CHECK(it != entries_.end(), mechanism_, ": decode state has no entry '", name, "'");
  const Entry& e = it->second;
  return e.dim < 0 ? e.storage : e.storage.narrow(e.dim, 0, length_);
}

void DecodeState::set(const std::string& name, torch::Tensor value) {
  entries_[name] = Entry{std::move(value), -1};
}

void DecodeState::advance(int64_t n) {
  TORCH_CHECK(n >= 0, mechanism_, ": cannot advance a decode state by ", n, " tokens");
  length_ += n;
}

int64_t DecodeState::bytes() const {
  int64_t total = 0;
  for (const auto& kv : entries_) {
    const Entry& e = kv.second;
    if (!e.storage.defined()) continue;
    const int64_t per_position =
        e.dim < 0 ? e.storage.numel()
                  : e.storage.numel() / std::max<int64_t>(e.storage.size(e.dim), 1);
    total += (e.dim < 0 ? per_position : per_position * length_) *
             static_cast<int64_t>(e.storage.element_size());
  }
  return total;
}

std::vector<std::string> DecodeState::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

}  // namespace attnkit
