// The C++ file helpers of saved state (aios/io/safetensors.h), for the Python package's saves of
// encoders and decoders: the same atomic writes, fsyncs and clean-up as the C++ saves.
#include "aios/io/safetensors.h"
#include "bindings.h"

namespace aios::python {

void bind_files(py::module_& m) {
  m.def(
      "write_file_atomically",
      [](const std::string& path, const py::bytes& data) {
        std::string bytes = data;
        py::gil_scoped_release release;
        io::write_file_atomically(path, bytes);
      },
      py::arg("path"), py::arg("data"),
      "bytes to path: a temporary file beside it, flushed and fsync'ed, renamed over it, the folder synced");
  m.def("create_folders", &io::create_folders, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
        "the folder and its missing parents, the parent of each one made synced");
  m.def("unique_file_name", &io::unique_file_name, py::arg("prefix"), py::arg("suffix"),
        "prefix + a part no earlier save used + suffix");
  m.def("remove_superseded", &io::remove_superseded, py::arg("folder"), py::arg("prefix"), py::arg("keep"),
        py::call_guard<py::gil_scoped_release>(),
        "removes the files of folder named prefix... other than keep, and temporaries of interrupted writes");
}

}  // namespace aios::python
