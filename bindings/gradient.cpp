// The results of the Gradient API: FusedResult (forward_backward) and Gradients (vjp with an
// extension).
#include "bindings.h"

#include "aios/gradient_api/backbone.h"

namespace aios::python {

namespace {

using aios::gradient::FusedResult;
using aios::gradient::Gradients;

}  // namespace

void bind_gradient(py::module_& m) {
  py::class_<FusedResult>(m, "FusedResult", "Result of Backbone.forward_backward.")
      .def_readonly("loss", &FusedResult::loss, "scalar float32: mean over weighted tokens")
      .def_readonly("losses", &FusedResult::losses, "float32 [B]: the mean per sequence")
      .def_property_readonly("grad_latents", [](const FusedResult& r) { return r.grad.latents; },
                             "[B,T,D]: d loss / d latents")
      .def_property_readonly("grad_embedding_rows", [](const FusedResult& r) { return optional_tensor(r.grad.embedding_rows); },
                             "[K,D]: d loss / d the extension's embedding rows (needs extension and ids), else None")
      .def_property_readonly("grad_classifier_rows", [](const FusedResult& r) { return optional_tensor(r.grad.classifier_rows); },
                             "[K,D]: d loss / d the extension's classifier rows (needs extension), else None");

  py::class_<Gradients>(m, "Gradients", "Result of Backbone.vjp for a pass that named an extension.")
      .def_readonly("latents", &Gradients::latents, "[B,T,D]: d loss / d latents")
      .def_property_readonly("embedding_rows", [](const Gradients& g) { return optional_tensor(g.embedding_rows); },
                             "[K,D]: d loss / d the extension's embedding rows (when ids were given), else None")
      .def_property_readonly("classifier_rows", [](const Gradients& g) { return optional_tensor(g.classifier_rows); },
                             "[K,D]: d loss / d the extension's classifier rows");
}

}  // namespace aios::python
