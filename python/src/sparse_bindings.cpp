// attnkit._C.sparse: masks, maskers and research attention (include/attnkit/sparse/) seen from
// Python. The package's attnkit.sparse wraps these with list-of-dict configs and the evaluation.

#include <attnkit/sparse/fixed_maskers.h>
#include <attnkit/sparse/mask.h>
#include <attnkit/sparse/masker.h>
#include <attnkit/sparse/research_attention.h>

#include <torch/extension.h>

#include <optional>
#include <sstream>
#include <vector>

namespace py = pybind11;
using torch::Tensor;
using OptTensor = std::optional<Tensor>;

namespace attnkit {
namespace {

Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

py::object or_none(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }

const char* form_name(sparse::Mask::Form f) {
  switch (f) {
    case sparse::Mask::Form::kFull: return "full";
    case sparse::Mask::Form::kEmpty: return "empty";
    case sparse::Mask::Form::kDense: return "dense";
    case sparse::Mask::Form::kIndex: return "index";
  }
  return "?";
}

const char* kind_name(sparse::MaskerKind k) {
  switch (k) {
    case sparse::MaskerKind::kFixed: return "fixed";
    case sparse::MaskerKind::kTopK: return "top_k";
    case sparse::MaskerKind::kTopP: return "top_p";
    case sparse::MaskerKind::kSampling: return "sampling";
  }
  return "?";
}

torch::Dtype dtype_of(const std::optional<torch::Dtype>& dtype) {
  return dtype.value_or(torch::kFloat);
}

}  // namespace

void bind_sparse(py::module_& parent) {
  py::module_ m = parent.def_submodule("sparse", "masks, maskers and research attention");
  using sparse::Mask;

  py::class_<Mask>(m, "Mask")
      .def_static("empty", [](std::vector<int64_t> shape, const std::optional<torch::Dtype>& dtype) {
        return Mask::empty(shape, dtype_of(dtype));
      }, py::arg("shape"), py::arg("dtype") = py::none())
      .def_static("full", [](std::vector<int64_t> shape, const std::optional<torch::Dtype>& dtype) {
        return Mask::full(shape, dtype_of(dtype));
      }, py::arg("shape"), py::arg("dtype") = py::none())
      .def_static("from_dense", [](std::vector<int64_t> shape, const Tensor& dense,
                                   const std::optional<torch::Dtype>& dtype) {
        return Mask::from_dense(shape, dense, dtype_of(dtype));
      }, py::arg("shape"), py::arg("dense"), py::arg("dtype") = py::none())
      .def_static("from_indices", [](std::vector<int64_t> shape, const Tensor& indices,
                                     const Tensor& ptr, const OptTensor& data,
                                     const std::optional<torch::Dtype>& dtype) {
        return Mask::from_indices(shape, indices, ptr, or_undefined(data), dtype_of(dtype));
      }, py::arg("shape"), py::arg("indices"), py::arg("ptr"), py::arg("data") = py::none(),
         py::arg("dtype") = py::none())
      .def_static("from_row_wise", [](std::vector<int64_t> shape, const Tensor& row_idx,
                                      const OptTensor& data, const std::optional<torch::Dtype>& dtype,
                                      bool use_padding, bool sparse) {
        return Mask::from_row_wise(shape, row_idx, or_undefined(data), dtype_of(dtype),
                                   use_padding, sparse);
      }, py::arg("shape"), py::arg("row_idx"), py::arg("data") = py::none(),
         py::arg("dtype") = py::none(), py::arg("use_padding") = false, py::arg("sparse") = true)
      .def_property_readonly("shape", &Mask::shape)
      .def_property_readonly("form", [](const Mask& mk) { return form_name(mk.form()); })
      .def("is_full", &Mask::is_full)
      .def("is_empty", &Mask::is_empty)
      .def("dense", &Mask::dense)
      .def("index", [](const Mask& mk) {
        auto i = mk.index();
        return py::make_tuple(i.indices, i.ptr, i.data);
      })
      .def("density", &Mask::density)
      .def("apply", &Mask::apply)
      .def("apply_inverse", &Mask::apply_inverse)
      .def("row_sum_inverse", &Mask::row_sum_inverse)
      .def("merge", &Mask::merge)
      .def("__repr__", [](const Mask& mk) {
        std::ostringstream os;
        os << "attnkit.sparse.Mask(form=" << form_name(mk.form())
           << ", shape=" << torch::IntArrayRef(mk.shape()) << ", density=" << mk.density() << ")";
        return os.str();
      });

  py::class_<sparse::MaskerState>(m, "MaskerState")
      .def(py::init<>())
      .def("get", [](const sparse::MaskerState& s, const std::string& key, int64_t layer) {
        return or_none(s.get(key, layer));
      })
      .def("set", &sparse::MaskerState::set)
      .def("has", &sparse::MaskerState::has)
      .def("clear", &sparse::MaskerState::clear)
      .def("keys", [](const sparse::MaskerState& s) {
        std::vector<std::pair<std::string, int64_t>> keys;
        for (const auto& kv : s.entries()) keys.push_back(kv.first);
        return keys;
      })
      .def("__len__", &sparse::MaskerState::size);

  py::class_<sparse::Masker, std::shared_ptr<sparse::Masker>>(m, "Masker")
      .def_property_readonly("type", &sparse::Masker::type)
      .def_property_readonly("kind", [](const sparse::Masker& mk) { return kind_name(mk.kind()); })
      .def("add_mask",
           [](const sparse::Masker& mk, const Tensor& keys, const Tensor& queries,
              const Tensor& values, const OptTensor& attention_mask, double scaling,
              double dropout, sparse::MaskerState& state, const Mask& previous_mask,
              std::optional<int64_t> layer_idx) {
             py::gil_scoped_release release;
             return mk.add_mask(keys, queries, values, or_undefined(attention_mask), scaling,
                                dropout, state, previous_mask, layer_idx);
           },
           py::arg("keys"), py::arg("queries"), py::arg("values"), py::arg("attention_mask"),
           py::arg("scaling"), py::arg("dropout"), py::arg("state"), py::arg("previous_mask"),
           py::arg("layer_idx") = py::none());

  m.def("make_masker", [](const std::string& json) {
    return std::const_pointer_cast<sparse::Masker>(sparse::make_masker(json));
  });
  m.def("masker_types", &sparse::masker_types);

  py::class_<sparse::ResearchAttention>(m, "ResearchAttention")
      .def(py::init(&sparse::ResearchAttention::from_json), py::arg("json_array"))
      .def("maskers", [](const sparse::ResearchAttention& ra) {
        std::vector<std::shared_ptr<sparse::Masker>> out;
        for (const auto& mk : ra.maskers()) out.push_back(std::const_pointer_cast<sparse::Masker>(mk));
        return out;
      })
      .def("build_mask",
           [](const sparse::ResearchAttention& ra, const Tensor& q, const Tensor& k,
              const Tensor& v, const OptTensor& attention_mask, double scaling, double dropout,
              sparse::MaskerState& state, std::optional<int64_t> layer_idx) {
             py::gil_scoped_release release;
             return ra.build_mask(q, k, v, or_undefined(attention_mask), scaling, dropout, state,
                                  layer_idx);
           })
      .def("custom_attention",
           [](const sparse::ResearchAttention& ra, const Tensor& q, const Tensor& k,
              const Tensor& v, const OptTensor& attention_mask, double scaling, double dropout,
              sparse::MaskerState& state, std::optional<int64_t> layer_idx, bool need_weights,
              bool training) {
             std::optional<sparse::ResearchAttentionResult> r;
             {
               py::gil_scoped_release release;
               r.emplace(ra.custom_attention(q, k, v, or_undefined(attention_mask), scaling,
                                             dropout, state, layer_idx, need_weights, training));
             }
             return py::make_tuple(r->output, or_none(r->weights), r->mask);
           });

  m.def("masked_attention",
        [](const Tensor& q, const Tensor& k, const Tensor& v, const Mask& mask,
           const OptTensor& attention_mask, double scaling) {
          py::gil_scoped_release release;
          return sparse::masked_attention(q, k, v, mask, or_undefined(attention_mask), scaling);
        });
  m.def("masked_attention_reference",
        [](const Tensor& q, const Tensor& k, const Tensor& v, const Mask& mask,
           const OptTensor& attention_mask, double scaling, double dropout) {
          py::gil_scoped_release release;
          return sparse::masked_attention_reference(q, k, v, mask, or_undefined(attention_mask),
                                                    scaling, dropout);
        });
  m.def("dense_attention",
        [](const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& attention_mask,
           double scaling) {
          py::gil_scoped_release release;
          return sparse::dense_attention(q, k, v, or_undefined(attention_mask), scaling);
        });
}

}  // namespace attnkit
