// Internal: the parts of the Python module aios._aios, one bind_* function per component (module.cpp
// calls them in order), and the helpers that more than one part uses.
#pragma once

#include <memory>
#include <optional>

#include <torch/csrc/utils/pybind.h>

// Here, so in every part: pybind11 needs the conversions of STL types to be the same in each file
// that uses them.
#include <pybind11/stl.h>

namespace aios::ali {
class Extension;
}

namespace aios::python {

namespace py = pybind11;

void bind_errors(py::module_& m);      // errors.cpp: aios.Error as the aios.errors classes
void bind_tokenizer(py::module_& m);   // tokenizer.cpp: Tokenizer, end_of_turn_ids
void bind_gradient(py::module_& m);    // gradient.cpp: FusedResult, Gradients
void bind_generation(py::module_& m);  // generation.cpp: GenerationStep ... Generation, Decoder
void bind_extension(py::module_& m);   // extension.cpp: Extension
void bind_backbone(py::module_& m);    // backbone.cpp: Config, ForwardOutput, gist_mask, Backbone, LocalBackbone
void bind_remote(py::module_& m);      // remote.cpp: RemoteBackbone, connect
void bind_adapters(py::module_& m);    // adapters.cpp: the sequence builder, encoder and decoder folders

// Extension rows require grad in Python, so that torch.optim accepts them; aios never records a
// graph through them (it reads them detached). In extension.cpp.
std::shared_ptr<ali::Extension> trainable(std::shared_ptr<ali::Extension> extension);

// An undefined tensor as None.
inline std::optional<at::Tensor> optional_tensor(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace aios::python
