#pragma once
// The base class every sequence-to-sequence mechanism derives from, so a block, the CLI and the
// arena can hold any of them.

#include <attnkit/core/decode_state.h>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>

namespace attnkit {

/// What `forward_with_aux` returns for the dense mechanisms; sparse mechanisms extend it with
/// their own named fields.
struct AttentionOutput {
  /// [B, T, dim]
  torch::Tensor output;
  /// Attention weights [B, H, T, T], rows summing to 1 (0 for a fully masked row).
  torch::Tensor attn_weights;
};

/// Abstract base of sequence-to-sequence attention mechanisms: x [B, T, dim] -> [B, T, dim].
/// It is a plain `torch::nn::Module` (no virtual inheritance), so each mechanism holds exactly one
/// Module. Concrete mechanisms derive from `AttentionCloneable<FooImpl>` (below), which supplies
/// the deep-copying `clone()` that `torch::nn::Cloneable` gives other modules.
class AttentionImpl : public torch::nn::Module {
 public:
  ~AttentionImpl() override = default;

  /// Registers every parameter, buffer and submodule (as `torch::nn::Cloneable::reset`).
  virtual void reset() = 0;
  /// A deep copy: a module built afresh from the same options, into which every parameter and
  /// buffer is copied by name, moved to `device` if given, in the same training mode.
  std::shared_ptr<torch::nn::Module> clone(
      const std::optional<torch::Device>& device = std::nullopt) const override;

  /// x: [B, T, dim] -> [B, T, dim]
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  /// With a per-call mask, boolean (true = attend) or additive float, of shape [T, T],
  /// [B, T, T] or [B, 1 or H, T, T]. An undefined mask means none. Mechanisms without mask
  /// support raise a c10::Error for a defined mask.
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask);
  /// Prefill (any T) or decode (T = 1) step that continues the sequence held in `state`.
  virtual torch::Tensor forward(const torch::Tensor& x, DecodeState& state);
  /// An empty decode state for `batch_size` sequences.
  virtual DecodeState init_state(int64_t batch_size) const;
  /// Whether `forward(x, state)` is available (causal mechanisms only).
  virtual bool supports_decoding() const { return false; }
  /// The output and the attention weights, computed only when asked, with an optional per-call
  /// mask as in forward(x, attn_mask) (masked weights are 0). Mechanisms without mask support
  /// raise a c10::Error for a defined mask.
  virtual AttentionOutput forward_with_aux(const torch::Tensor& x,
                                           const torch::Tensor& attn_mask = {});

  /// The class name without `Impl`, used in messages: "GroupedQueryAttention".
  virtual std::string mechanism() const = 0;
  /// Model width of input and output.
  virtual int64_t dim() const = 0;

 protected:
  /// A newly constructed module with this one's options (and fresh parameters); clone() copies
  /// this module's values into it. AttentionCloneable implements it for mechanisms built from
  /// their `options`; wrappers build theirs around a clone of the wrapped module.
  virtual std::shared_ptr<AttentionImpl> construct_like() const = 0;
  /// An empty state owned by this module; raises unless supports_decoding().
  DecodeState new_state(int64_t batch_size) const;
  /// Raises unless `state` was made by this module's init_state for x's batch size.
  void check_state(const DecodeState& state, const torch::Tensor& x) const;

 private:
  /// What torch::nn::Cloneable::clone calls on every child of the module it copies: `this` is
  /// the child that the copy's reset() built afresh, and takes `other`'s parameter and buffer
  /// values (moved to `device` if given) and training mode.
  void clone_(torch::nn::Module& other, const std::optional<torch::Device>& device) override;
};

/// The base of a concrete mechanism `Derived` constructible from its public `options` member:
///   class FooImpl : public AttentionCloneable<FooImpl> { ... FooOptions options; };
/// `Base` lets mechanisms share an intermediate base (ProjectedAttentionImpl).
template <typename Derived, typename Base = AttentionImpl>
class AttentionCloneable : public Base {
 public:
  using Base::Base;

 protected:
  std::shared_ptr<AttentionImpl> construct_like() const override {
    return std::make_shared<Derived>(static_cast<const Derived&>(*this).options);
  }
};

/// Declares the module holder `Name` for `NameImpl`, like TORCH_MODULE, with call operators for
/// the overloaded forwards (TORCH_MODULE's generic operator() cannot deduce an overloaded
/// forward): m(x), m(x, attn_mask), m(x, state).
#define ATTNKIT_ATTENTION_MODULE(Name)                                                   \
  class Name : public torch::nn::ModuleHolder<Name##Impl> { /* NOLINT */                 \
   public:                                                                               \
    using torch::nn::ModuleHolder<Name##Impl>::ModuleHolder;                             \
    using Impl = Name##Impl;                                                             \
    /* Calls go through the base so a mechanism overriding only some overloads works. */ \
    torch::Tensor operator()(const torch::Tensor& x) { return base().forward(x); }       \
    torch::Tensor operator()(const torch::Tensor& x, const torch::Tensor& attn_mask) {   \
      return base().forward(x, attn_mask);                                               \
    }                                                                                    \
    torch::Tensor operator()(const torch::Tensor& x, ::attnkit::DecodeState& state) {    \
      return base().forward(x, state);                                                   \
    }                                                                                    \
                                                                                         \
   private:                                                                              \
    ::attnkit::AttentionImpl& base() { return *get(); }                                  \
  }

ATTNKIT_ATTENTION_MODULE(Attention);

/// Views any mechanism's holder as an `Attention` (shares the module, copies nothing).
/// Example:
///   Attention any = as_attention(GroupedQueryAttention(512, 8, 2));
template <typename Holder>
Attention as_attention(const Holder& holder) {
  return Attention(std::shared_ptr<AttentionImpl>(holder.ptr()));
}

}  // namespace attnkit
