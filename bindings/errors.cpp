// aios.Error (and LibTorch's out-of-memory error) raised in Python as the aios.errors class of its
// code; error_codes(), the table aios.errors makes those classes from.
#include "bindings.h"

#include <string>

#include "aios/error.h"

namespace aios::python {

namespace {

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

// The translator is the process's, not the module's.
void bind_errors(py::module_& m) {
  m.def("error_codes", [] {
    py::list out;
    for (const ErrorCodeInfo& info : kErrorCodes) {
      out.append(py::make_tuple(static_cast<int>(info.code), std::string(info.name), std::string(info.meaning)));
    }
    return out;
  }, "aios's error codes, each (number, name, meaning): the table of aios/error.h");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const aios::Error& e) {
      raise_python_error(e);
    } catch (const c10::OutOfMemoryError& e) {
      raise_python_error(aios::Error(aios::ErrorCode::kResourceExhausted, "memory", e.what_without_backtrace()));
    }
  });
}

}  // namespace aios::python
