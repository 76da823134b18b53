#pragma once
// The per-sequence state a mechanism carries between decoding calls (KV cache, latents,
// recurrent states), as named tensors plus the number of tokens already processed.

#include <torch/types.h>

#include <map>
#include <string>

namespace attnkit {

/// Named tensors and the current length of a decoding session. A mechanism creates one with
/// `init_state(batch_size)`, grows it in `forward(x, state)`, and refuses a state it did not make.
/// Example:
///   DecodeState state = attn->init_state(/*batch_size=*/1);
///   attn->forward(prompt, state);            // state.length() == prompt.size(1)
///   std::cout << state.bytes() / state.length() << " bytes per token\n";
class DecodeState {
 public:
  DecodeState() = default;
  /// `owner` identifies the module (its address), `mechanism` names it in messages.
  DecodeState(const void* owner, std::string mechanism, int64_t batch_size);

  /// Tokens processed so far; the next token sits at this position.
  int64_t length() const { return length_; }
  int64_t batch_size() const { return batch_size_; }
  const std::string& mechanism() const { return mechanism_; }
  bool initialized() const { return owner_ != nullptr; }

  /// Raises a c10::Error naming `mechanism` unless this state was made by `owner` for
  /// `batch_size` sequences.
  void check(const void* owner, const std::string& mechanism, int64_t batch_size) const;

  /// Writes `chunk` at positions [length, length + n) of the cache `name` along `dim`
  /// (n = chunk.size(dim)) and returns the view of positions [0, length + n). Storage grows
  /// geometrically, so token-by-token decoding copies each entry O(1) times on average.
  torch::Tensor append(const std::string& name, const torch::Tensor& chunk, int64_t dim);
  /// The valid part [0, length) of an appended cache, or a tensor stored with `set`.
  torch::Tensor get(const std::string& name) const;
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  /// Stores a tensor that does not grow with the sequence (a recurrent state, a ring buffer).
  void set(const std::string& name, torch::Tensor value);
  /// Marks n more tokens as processed; call once per forward, after every append.
  void advance(int64_t n);

  /// Bytes held by the valid part of every entry (what the cache costs, not its capacity).
  int64_t bytes() const;
  /// Names of the entries, sorted.
  std::vector<std::string> names() const;

 private:
  struct Entry {
    torch::Tensor storage;
    int64_t dim = -1;  // growth dim of an appended cache; -1 for a `set` tensor
  };
  const void* owner_ = nullptr;
  std::string mechanism_;
  int64_t batch_size_ = 0;
  int64_t length_ = 0;
  std::map<std::string, Entry> entries_;
};

}  // namespace attnkit
