// aios.Extension: new tokens with their own rows over a frozen backbone.
#include "bindings.h"

#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "aios/ali/extension.h"
#include "aios/gradient_api/backbone.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace aios::python {

namespace {

using aios::ali::Extension;
using Interface = aios::gradient::Backbone;  // what both the local and the remote backbone implement

}  // namespace

std::shared_ptr<Extension> trainable(std::shared_ptr<Extension> extension) {
  extension->embedding_rows().requires_grad_(true);
  extension->classifier_rows().requires_grad_(true);
  return extension;
}

void bind_extension(py::module_& m) {
  py::class_<Extension, std::shared_ptr<Extension>>(
      m, "Extension",
      "New tokens with their own embedding and classifier rows over a frozen backbone (Backbone.extend). "
      "embedding_rows and classifier_rows are the live [K,D] rows: optimise them in place, e.g. with "
      "torch.optim over extension.parameters().")
      .def_static(
          "load",
          [](Interface& backbone, const py::object& path) {
            const std::string p = py::str(py::module_::import("os").attr("fspath")(path));
            py::gil_scoped_release release;
            return trainable(Extension::load(backbone, p));
          },
          py::arg("backbone"), py::arg("path"), "reads a folder written by save() onto backbone")
      .def(
          "save",
          [](const Extension& e, const py::object& path) {
            const std::string p = py::str(py::module_::import("os").attr("fspath")(path));
            py::gil_scoped_release release;
            e.save(p);
          },
          py::arg("path"), "writes extension.json and the rows into the folder path, atomically")
      .def_property_readonly("tokens", &Extension::tokens)
      .def_property_readonly("first_id", &Extension::first_id, "the id of tokens[0] (the base vocabulary size)")
      .def_property_readonly("ids", [](const Extension& e) {
        std::vector<int64_t> ids;
        for (int64_t k = 0; k < e.size(); ++k) ids.push_back(e.first_id() + k);
        return ids;
      })
      .def("__len__", &Extension::size)
      .def("token_to_id", &Extension::token_to_id, py::arg("token"))
      .def_property_readonly("embedding_rows", &Extension::embedding_rows, "[K,D], the rows embed() uses for the new ids")
      .def_property_readonly("classifier_rows", &Extension::classifier_rows, "[K,D], the rows classify() appends")
      .def("parameters", [](const Extension& e) { return std::vector<at::Tensor>{e.embedding_rows(), e.classifier_rows()}; },
           "[embedding_rows, classifier_rows], for torch.optim")
      .def_property_readonly(
          "tokenizer",
          [](const Extension& e) { return std::const_pointer_cast<aios::tokenizer::Tokenizer>(e.tokenizer()); },
          "the backbone's tokenizer with these tokens as atomic special tokens")
      .def("__repr__", [](const Extension& e) {
        return fmt::format("Extension(tokens=[{}], first_id={})", fmt::join(e.tokens(), ", "), e.first_id());
      });
}

}  // namespace aios::python
