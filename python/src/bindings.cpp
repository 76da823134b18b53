// attnkit._C: the C++ library seen from Python. The Python package (python/attnkit) builds its
// nn.Modules around the objects bound here and registers the kernels as torch.library operators;
// this file only translates: tensors pass by reference (a Python tensor and the C++ tensor are
// one TensorImpl), c10::Error becomes attnkit.Error, and the GIL is released around C++ work.

#include <attnkit/attnkit.h>
#include <attnkit/factory.h>

#include "ops/flex_attention.h"  // the fused backward, from the library's op layer

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/extension.h>
#include <torch/serialize.h>

#include <sstream>

namespace py = pybind11;
using torch::Tensor;
using OptTensor = std::optional<Tensor>;

namespace attnkit {
namespace {

Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

py::object tensor_or_none(const Tensor& t) {
  return t.defined() ? py::cast(t) : py::none();
}

// forward_with_aux as a dict of the fields the mechanism has: the package turns it into a
// dataclass. Sparse and wrapper mechanisms return their extended outputs.
py::dict aux_dict(AttentionImpl& m, const Tensor& x, const Tensor& mask) {
  py::dict d;
  auto put = [&](const char* name, const Tensor& t) { d[name] = tensor_or_none(t); };
  AttentionOutput base;
  {
    py::gil_scoped_release release;
    if (auto* dsa = dynamic_cast<DeepSeekSparseAttentionImpl*>(&m)) {
      DeepSeekSparseOutput o = dsa->forward_with_aux_sparse(x, mask);
      py::gil_scoped_acquire acquire;
      put("index_scores", o.index_scores), put("selected", o.selected);
      put("selected_indices", o.selected_indices);
      base = o;
    } else if (auto* msa = dynamic_cast<MiniMaxSparseAttentionImpl*>(&m)) {
      MiniMaxSparseOutput o = msa->forward_with_aux_sparse(x, mask);
      py::gil_scoped_acquire acquire;
      put("index_scores", o.index_scores), put("block_scores", o.block_scores);
      put("selected_blocks", o.selected_blocks), put("keep", o.keep);
      base = o;
    } else if (auto* csa = dynamic_cast<CompressedSparseAttentionImpl*>(&m)) {
      CompressedSparseOutput o = csa->forward_with_aux_sparse(x, mask);
      py::gil_scoped_acquire acquire;
      put("index_scores", o.index_scores), put("selected", o.selected);
      base = o;
    } else {
      if (auto* gated = dynamic_cast<GatedAttentionImpl*>(&m)) {
        GatedAttentionOutput o = gated->forward_with_aux_gated(x, mask);
        py::gil_scoped_acquire acquire;
        put("gate", o.gate);
        base = o;
      } else if (auto* combined = dynamic_cast<CombinedAttentionImpl*>(&m)) {
        CombinedAttentionOutput o = combined->forward_with_aux_combined(x, mask);
        py::gil_scoped_acquire acquire;
        put("attn_weights_b", o.attn_weights_b), put("gate", o.gate);
        base = o;
      } else {
        base = m.forward_with_aux(x, mask);
      }
    }
  }
  put("output", base.output), put("attn_weights", base.attn_weights);
  return d;
}

// Runs `fn` with autograd recording even inside an operator's kernel, where the dispatcher has
// excluded the autograd keys (a torch.library backward runs there), and returns the gradients
// of its outputs against `inputs` weighted by `grads` (undefined grads count as zeros).
std::vector<Tensor> vjp(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& fn,
                        const std::vector<Tensor>& inputs,
                        const std::vector<Tensor>& grads) {
  c10::impl::LocalDispatchKeySet tls = c10::impl::tls_local_dispatch_key_set();
  c10::impl::ForceDispatchKeyGuard with_autograd(
      tls.included_, tls.excluded_ - c10::autograd_dispatch_keyset_with_ADInplaceOrView);
  torch::AutoGradMode grad_mode(true);
  std::vector<Tensor> leaves;
  std::vector<Tensor> wrt;
  for (const Tensor& t : inputs) {
    if (t.defined() && t.is_floating_point()) {
      leaves.push_back(t.detach().requires_grad_(true));
      wrt.push_back(leaves.back());
    } else {
      leaves.push_back(t);
    }
  }
  std::vector<Tensor> outs = fn(leaves);
  std::vector<Tensor> used_outs, used_grads;
  for (size_t i = 0; i < outs.size() && i < grads.size(); ++i) {
    if (grads[i].defined() && outs[i].defined() && outs[i].requires_grad()) {
      used_outs.push_back(outs[i]);
      used_grads.push_back(grads[i].to(outs[i].scalar_type()));
    }
  }
  std::vector<Tensor> result(inputs.size());
  if (used_outs.empty() || wrt.empty()) return result;
  std::vector<Tensor> g = torch::autograd::grad(used_outs, wrt, used_grads,
                                                /*retain_graph=*/false, /*create_graph=*/false,
                                                /*allow_unused=*/true);
  for (size_t i = 0, j = 0; i < inputs.size(); ++i) {
    if (inputs[i].defined() && inputs[i].is_floating_point()) result[i] = g[j++];
  }
  return result;
}

functional::FlexAttentionOptions flex_options(std::optional<double> scale,
                                              bool causal,
                                              std::optional<int64_t> window_left,
                                              std::optional<int64_t> window_right,
                                              const Tensor& sinks,
                                              double softcap,
                                              const Tensor& alibi_slopes,
                                              const Tensor& bias,
                                              const Tensor& mask,
                                              const Tensor& block_keep,
                                              int64_t block_q,
                                              int64_t block_k) {
  functional::FlexAttentionOptions o;
  o.scale(scale).causal(causal).window_left(window_left).window_right(window_right);
  o.sinks(sinks).softcap(softcap).alibi_slopes(alibi_slopes).bias(bias).mask(mask);
  if (block_keep.defined()) o.block_mask(functional::block_mask_from_keep(block_keep, block_q, block_k));
  return o;
}

}  // namespace
}  // namespace attnkit

namespace attnkit {
void bind_sparse(py::module_& parent);  // sparse_bindings.cpp
}  // namespace attnkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace attnkit;
  m.doc() = "attnkit's C++ library (use the attnkit package, not this module)";

  static py::exception<c10::Error> error(m, "Error", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::Error& e) {
      PyErr_SetString(error.ptr(), e.what_without_backtrace());
    }
  });

  py::class_<DecodeState>(m, "DecodeState", py::module_local(),
                          "Per-sequence decoding state (KV cache, latents, recurrent states).")
      .def_property_readonly("length", &DecodeState::length, "Tokens processed so far.")
      .def_property_readonly("batch_size", &DecodeState::batch_size)
      .def_property_readonly("mechanism", &DecodeState::mechanism)
      .def("bytes", &DecodeState::bytes, "Bytes held by the valid part of every entry.")
      .def("names", &DecodeState::names)
      .def("get", &DecodeState::get, py::arg("name"))
      .def("__repr__", [](const DecodeState& s) {
        std::ostringstream out;
        out << "DecodeState(" << s.mechanism() << ", batch_size=" << s.batch_size()
            << ", length=" << s.length() << ", bytes=" << s.bytes() << ")";
        return out.str();
      });

  // module_local: torch registers torch::nn::Module with pybind11 too.
  py::class_<torch::nn::Module, std::shared_ptr<torch::nn::Module>>(m, "Module", py::module_local())
      .def("named_parameters",
           [](torch::nn::Module& self) {
             std::vector<std::pair<std::string, Tensor>> out;
             for (const auto& item : self.named_parameters(/*recurse=*/false))
               out.emplace_back(item.key(), item.value());
             return out;
           })
      .def("named_buffers",
           [](torch::nn::Module& self) {
             std::vector<std::pair<std::string, Tensor>> out;
             for (const auto& item : self.named_buffers(/*recurse=*/false))
               out.emplace_back(item.key(), item.value());
             return out;
           })
      .def("named_children",
           [](torch::nn::Module& self) {
             std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
             for (const auto& item : self.named_children()) out.emplace_back(item.key(), item.value());
             return out;
           })
      .def("train", [](torch::nn::Module& self, bool on) { self.train(on); }, py::arg("on") = true)
      .def_property_readonly("training", &torch::nn::Module::is_training)
      .def("save",
           [](const std::shared_ptr<torch::nn::Module>& self, const std::string& path) {
             torch::serialize::OutputArchive archive;
             self->save(archive);
             archive.save_to(path);
           })
      .def("load",
           [](const std::shared_ptr<torch::nn::Module>& self, const std::string& path) {
             torch::serialize::InputArchive archive;
             archive.load_from(path);
             self->load(archive);
           })
      .def("__repr__", [](const torch::nn::Module& self) {
        std::ostringstream out;
        self.pretty_print(out);
        return out.str();
      });

  py::class_<AttentionImpl, torch::nn::Module, std::shared_ptr<AttentionImpl>>(m, "Attention", py::module_local())
      .def("forward",
           [](AttentionImpl& self, const Tensor& x, const OptTensor& mask) {
             py::gil_scoped_release release;
             return mask.has_value() ? self.forward(x, *mask) : self.forward(x);
           },
           py::arg("x"), py::arg("attn_mask") = py::none())
      .def("forward_state",
           [](AttentionImpl& self, const Tensor& x, DecodeState& state) {
             py::gil_scoped_release release;
             return self.forward(x, state);
           })
      .def("forward_with_aux",
           [](AttentionImpl& self, const Tensor& x, const OptTensor& mask) {
             return aux_dict(self, x, value_or_undefined(mask));
           },
           py::arg("x"), py::arg("attn_mask") = py::none())
      .def("init_state", &AttentionImpl::init_state, py::arg("batch_size"))
      .def("supports_decoding", &AttentionImpl::supports_decoding)
      .def("mechanism", &AttentionImpl::mechanism)
      .def("dim", &AttentionImpl::dim)
      .def("clone", [](const AttentionImpl& self) {
        return std::dynamic_pointer_cast<AttentionImpl>(self.clone());
      });

  // The set-to-set modules, with shapes of their own (no factory entry, no decoding).
  py::class_<SlotAttentionImpl, torch::nn::Module, std::shared_ptr<SlotAttentionImpl>>(
      m, "SlotAttention", py::module_local())
      .def(py::init([](int64_t dim, int64_t num_slots, int64_t num_iters, int64_t hidden_dim,
                       double eps) {
             return std::make_shared<SlotAttentionImpl>(SlotAttentionOptions(dim, num_slots)
                                                            .num_iters(num_iters)
                                                            .hidden_dim(hidden_dim)
                                                            .eps(eps));
           }),
           py::arg("dim"), py::arg("num_slots"), py::arg("num_iters"), py::arg("hidden_dim"),
           py::arg("eps"))
      .def("forward", [](SlotAttentionImpl& self, const Tensor& inputs) {
        py::gil_scoped_release release;
        return self.forward(inputs);
      });
  py::class_<CausalJEPAAttentionImpl, torch::nn::Module, std::shared_ptr<CausalJEPAAttentionImpl>>(
      m, "CausalJEPAAttention", py::module_local())
      .def(py::init([](int64_t dim, int64_t num_heads, int64_t num_slots, int64_t history_frames,
                       int64_t pred_frames, int64_t num_masked_slots, int64_t depth,
                       int64_t mlp_dim, double dropout, bool bias) {
             return std::make_shared<CausalJEPAAttentionImpl>(
                 CausalJEPAAttentionOptions(dim, num_heads, num_slots, history_frames)
                     .pred_frames(pred_frames)
                     .num_masked_slots(num_masked_slots)
                     .depth(depth)
                     .mlp_dim(mlp_dim)
                     .dropout(dropout)
                     .bias(bias));
           }),
           py::arg("dim"), py::arg("num_heads"), py::arg("num_slots"), py::arg("history_frames"),
           py::arg("pred_frames"), py::arg("num_masked_slots"), py::arg("depth"),
           py::arg("mlp_dim"), py::arg("dropout"), py::arg("bias"))
      .def("forward",
           [](CausalJEPAAttentionImpl& self, const Tensor& slots, const OptTensor& mask_slots) {
             py::gil_scoped_release release;
             CausalJEPAOutput o = self.forward(slots, value_or_undefined(mask_slots));
             return std::make_tuple(o.pred, o.mask_slots);
           })
      .def("predict", [](CausalJEPAAttentionImpl& self, const Tensor& slots) {
        py::gil_scoped_release release;
        return self.predict(slots);
      });
  m.def("cjepa_masked_loss", &cjepa_masked_loss, py::arg("pred"), py::arg("target"),
        py::arg("mask_slots"), py::arg("history_frames"));

  m.def("make_attention",
        [](const std::string& name, const std::string& json) {
          return make_attention(name, json).ptr();
        },
        py::arg("name"), py::arg("json_options"));
  m.def("mechanism_catalog_json", &mechanism_catalog_json);

  m.def("dsa_index_aux_loss", &dsa_index_aux_loss, py::arg("index_scores"), py::arg("attn_weights"));
  m.def("msa_index_aux_loss", &msa_index_aux_loss, py::arg("index_scores"),
        py::arg("attn_weights"), py::arg("keep"), py::arg("eps") = 1e-9);
  m.def("msa_index_aux_loss_v040", &msa_index_aux_loss_v040, py::arg("block_scores"),
        py::arg("attn_weights"), py::arg("block_size"), py::arg("group_size"),
        py::arg("eps") = 1e-9);

  // --- kernels: forwards and vector-Jacobian products for the torch.library operators ---------
  m.def("flex_attention",
        [](const Tensor& q, const Tensor& k, const Tensor& v, std::optional<double> scale,
           bool causal, std::optional<int64_t> window_left, std::optional<int64_t> window_right,
           const OptTensor& sinks, double softcap, const OptTensor& alibi_slopes,
           const OptTensor& bias, const OptTensor& mask, const OptTensor& block_keep,
           int64_t block_q, int64_t block_k) {
          py::gil_scoped_release release;
          torch::NoGradGuard no_grad;
          auto o = flex_options(scale, causal, window_left, window_right,
                                value_or_undefined(sinks), softcap,
                                value_or_undefined(alibi_slopes), value_or_undefined(bias),
                                value_or_undefined(mask), value_or_undefined(block_keep),
                                block_q, block_k);
          functional::FlexAttentionResult r = functional::flex_attention(q, k, v, o);
          return std::make_tuple(r.output, r.lse);
        });
  // The fused backward from the forward's output and lse where the fused kernels ran (fp32 and
  // bf16 on the CPU); otherwise the reference forward recomputed under autograd.
  m.def("flex_attention_vjp",
        [](const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
           const Tensor& out, const Tensor& lse, std::optional<double> scale, bool causal,
           std::optional<int64_t> window_left, std::optional<int64_t> window_right,
           const OptTensor& sinks, double softcap, const OptTensor& alibi_slopes,
           const OptTensor& bias, const OptTensor& mask, const OptTensor& block_keep,
           int64_t block_q, int64_t block_k) {
          py::gil_scoped_release release;
          if (functional::fused_backend_selected() && ops::fused_supported(q)) {
            auto o = flex_options(scale, causal, window_left, window_right,
                                  value_or_undefined(sinks), softcap,
                                  value_or_undefined(alibi_slopes), value_or_undefined(bias),
                                  value_or_undefined(mask), value_or_undefined(block_keep),
                                  block_q, block_k);
            ops::FlexAttentionGrads g = ops::flex_attention_backward(
                dout.contiguous(), q, k, v, out, lse.to(torch::kFloat), o, sinks.has_value(),
                bias.has_value());
            return std::vector<Tensor>{g.dq, g.dk, g.dv, g.dsinks, g.dbias};
          }
          auto run = [&](const std::vector<Tensor>& in) {
            auto o = flex_options(scale, causal, window_left, window_right, in[3], softcap,
                                  value_or_undefined(alibi_slopes), in[4],
                                  value_or_undefined(mask), value_or_undefined(block_keep),
                                  block_q, block_k);
            return std::vector<Tensor>{functional::flex_attention(in[0], in[1], in[2], o).output};
          };
          return vjp(run, {q, k, v, value_or_undefined(sinks), value_or_undefined(bias)}, {dout});
        });

  m.def("gather_attention",
        [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& indices,
           const OptTensor& weights, std::optional<double> scale, const OptTensor& sinks,
           int64_t block_size, bool causal) {
          py::gil_scoped_release release;
          torch::NoGradGuard no_grad;
          functional::GatherAttentionOptions o;
          o.scale(scale).sinks(value_or_undefined(sinks)).block_size(block_size).causal(causal);
          auto r = functional::gather_attention(q, k, v, indices, value_or_undefined(weights), o);
          return std::make_tuple(r.output, r.lse);
        });
  m.def("gather_attention_vjp",
        [](const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
           const Tensor& indices, const OptTensor& weights, std::optional<double> scale,
           const OptTensor& sinks, int64_t block_size, bool causal) {
          py::gil_scoped_release release;
          auto run = [&](const std::vector<Tensor>& in) {
            functional::GatherAttentionOptions o;
            o.scale(scale).sinks(in[4]).block_size(block_size).causal(causal);
            return std::vector<Tensor>{
                functional::gather_attention(in[0], in[1], in[2], indices, in[3], o).output};
          };
          return vjp(run, {q, k, v, value_or_undefined(weights), value_or_undefined(sinks)},
                     {dout});
        });

  m.def("index_topk",
        [](const Tensor& q, const Tensor& k, const OptTensor& w, int64_t top_k, bool causal,
           bool relu, double scale, int64_t block_size, const OptTensor& mask,
           const OptTensor& key_limit) {
          py::gil_scoped_release release;
          torch::NoGradGuard no_grad;
          functional::IndexTopkOptions o;
          o.top_k(top_k).causal(causal).relu(relu).scale(scale).block_size(block_size);
          o.mask(value_or_undefined(mask)).key_limit(value_or_undefined(key_limit));
          return functional::index_topk(q, k, value_or_undefined(w), o);
        });

  m.def("gated_delta_rule",
        [](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
           const Tensor& beta, const OptTensor& initial_state, std::optional<double> scale,
           int64_t chunk_size) {
          py::gil_scoped_release release;
          torch::NoGradGuard no_grad;
          GatedDeltaRuleOptions o;
          o.scale(scale).chunk_size(chunk_size);
          auto r = gated_delta_rule(q, k, v, g, beta, value_or_undefined(initial_state), o);
          return std::make_tuple(r.output, r.final_state);
        });
  m.def("gated_delta_rule_vjp",
        [](const Tensor& dout, const OptTensor& dstate, const Tensor& q, const Tensor& k,
           const Tensor& v, const Tensor& g, const Tensor& beta, const OptTensor& initial_state,
           std::optional<double> scale, int64_t chunk_size) {
          py::gil_scoped_release release;
          auto run = [&](const std::vector<Tensor>& in) {
            GatedDeltaRuleOptions o;
            o.scale(scale).chunk_size(chunk_size);
            auto r = gated_delta_rule(in[0], in[1], in[2], in[3], in[4], in[5], o);
            return std::vector<Tensor>{r.output, r.final_state};
          };
          return vjp(run, {q, k, v, g, beta, value_or_undefined(initial_state)},
                     {dout, value_or_undefined(dstate)});
        });
  attnkit::bind_sparse(m);
}
