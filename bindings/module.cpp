// aios._aios — Python bindings of the Latent API. Tensors are torch.Tensor objects of the Python
// torch in the same process: they pass in and out without copies.
#include "bindings.h"

PYBIND11_MODULE(_aios, m) {
  m.doc() = "aios: a frozen Transformer backbone behind a latent-vector API";

  // In this order: a class is registered before the signatures that name it (pybind11 writes them
  // into the docstrings as it defines each function) and before the classes derived from it.
  aios::python::bind_errors(m);
  aios::python::bind_tokenizer(m);
  aios::python::bind_gradient(m);
  aios::python::bind_generation(m);
  aios::python::bind_extension(m);
  aios::python::bind_backbone(m);
  aios::python::bind_remote(m);
  aios::python::bind_adapters(m);
}
