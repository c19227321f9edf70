// aios._aios — Python bindings of the Latent API. Tensors are torch.Tensor objects of the Python
// torch in the same process: they pass in and out without copies.
#include <torch/csrc/utils/pybind.h>

#include <fmt/format.h>
#include <pybind11/stl.h>

#include "aios/ali/local_backbone.h"
#include "aios/error.h"

namespace py = pybind11;

namespace {

using aios::ali::Backbone;
using aios::ali::ForwardOptions;
using aios::ali::ForwardOutput;
using aios::ali::LocalBackbone;
using aios::backbone::ModelConfig;
using aios::backbone::dtype_name;
using aios::backbone::parse_device;
using aios::backbone::parse_dtype;

// Raises the aios.errors class of the error's code, with .code, .code_name and .field set.
void raise_python_error(const aios::Error& e) {
  py::gil_scoped_acquire gil;
  py::module_ errors = py::module_::import("aios.errors");
  py::object cls = errors.attr("class_for_code")(static_cast<int>(e.code()));
  py::object instance = cls(e.what());
  instance.attr("code") = static_cast<int>(e.code());
  instance.attr("code_name") = std::string(aios::error_code_name(e.code()));
  instance.attr("field") = e.field();
  PyErr_SetObject(cls.ptr(), instance.ptr());
}

}  // namespace

PYBIND11_MODULE(_aios, m) {
  m.doc() = "aios: a frozen Transformer backbone behind a latent-vector API";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const aios::Error& e) {
      raise_python_error(e);
    }
  });

  py::class_<ModelConfig>(m, "Config", "Architecture of a loaded backbone (read-only).")
      .def_readonly("architecture", &ModelConfig::architecture)
      .def_property_readonly("family", [](const ModelConfig& c) { return aios::backbone::family_name(c.family); })
      .def_readonly("vocab_size", &ModelConfig::vocab_size)
      .def_readonly("hidden_size", &ModelConfig::hidden_size)
      .def_readonly("intermediate_size", &ModelConfig::intermediate_size)
      .def_readonly("num_layers", &ModelConfig::num_layers)
      .def_readonly("num_heads", &ModelConfig::num_heads)
      .def_readonly("num_kv_heads", &ModelConfig::num_kv_heads)
      .def_readonly("head_dim", &ModelConfig::head_dim)
      .def_readonly("max_positions", &ModelConfig::max_positions)
      .def_readonly("tie_word_embeddings", &ModelConfig::tie_word_embeddings)
      .def("__repr__", [](const ModelConfig& c) {
        return fmt::format("Config(architecture='{}', hidden_size={}, num_layers={}, num_heads={}, num_kv_heads={}, "
                           "vocab_size={})",
                           c.architecture, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size);
      });

  py::class_<ForwardOutput>(m, "ForwardOutput", "Result of Backbone.forward.")
      .def_readonly("hidden", &ForwardOutput::hidden, "[B,T,D] final hidden state, after the final norm")
      .def_readonly("layers", &ForwardOutput::layers, "list of [B,T,D], one per requested layer index");

  py::class_<LocalBackbone, std::shared_ptr<LocalBackbone>>(m, "Backbone", "A frozen backbone loaded in this process.")
      .def_static(
          "load",
          [](const py::object& path, const py::object& device, const py::object& dtype) {
            const std::string p = py::str(py::module_::import("os").attr("fspath")(path));
            aios::ali::LoadOptions options;
            options.device = parse_device(py::str(device));
            options.dtype = parse_dtype(py::str(dtype));
            py::gil_scoped_release release;
            return std::shared_ptr<LocalBackbone>(LocalBackbone::load(p, options));
          },
          py::arg("path"), py::arg("device") = "cpu", py::arg("dtype") = "float32",
          "Loads a Hugging Face checkpoint folder. dtype: float32, bfloat16 or float16 (or a torch.dtype).")
      .def_property_readonly("config", &LocalBackbone::config, py::return_value_policy::reference_internal)
      .def_property_readonly("device", [](const LocalBackbone& b) { return b.device().str(); })
      .def_property_readonly("dtype", [](const LocalBackbone& b) { return dtype_name(b.dtype()); })
      .def_property_readonly("parameter_count", &LocalBackbone::parameter_count)
      .def("embed", &LocalBackbone::embed, py::arg("ids"), py::call_guard<py::gil_scoped_release>(),
           "ids: int64/int32 [B,T] -> latents [B,T,D]")
      .def(
          "forward",
          [](LocalBackbone& b, const at::Tensor& latents, std::optional<at::Tensor> positions,
             std::optional<at::Tensor> mask, std::optional<std::vector<int64_t>> layers, bool allow_non_finite) {
            ForwardOptions options;
            options.positions = std::move(positions);
            options.mask = std::move(mask);
            if (layers) options.layers = *layers;
            options.allow_non_finite = allow_non_finite;
            return b.forward(latents, options);
          },
          py::arg("latents"), py::kw_only(), py::arg("positions") = py::none(), py::arg("mask") = py::none(),
          py::arg("layers") = py::none(), py::arg("allow_non_finite") = false,
          py::call_guard<py::gil_scoped_release>(),
          "latents [B,T,D] -> ForwardOutput(hidden [B,T,D], layers). positions: int64 [B,T] or [T]; "
          "mask: [B,T] key padding (with causal order) or [B,T,T] full boolean mask; layers: indices in "
          "[0, num_layers] of residual-stream states to return.")
      .def("classify", &LocalBackbone::classify, py::arg("hidden"), py::call_guard<py::gil_scoped_release>(),
           "hidden [..., D] -> logits [..., V]");
}
