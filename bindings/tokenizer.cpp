// aios.Tokenizer (tokenizer.json and GGUF tokenizers) and end_of_turn_ids.
#include "bindings.h"

#include <string>
#include <string_view>
#include <vector>

#include "aios/tokenizer_api/chat.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace aios::python {

void bind_tokenizer(py::module_& m) {
  using aios::tokenizer::Tokenizer;
  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer", "BPE compatible with tokenizer.json.")
      .def_static(
          "load",
          [](const py::object& path) {
            return std::make_shared<Tokenizer>(Tokenizer::load(py::str(py::module_::import("os").attr("fspath")(path))));
          },
          py::arg("path"), "Reads a tokenizer.json file, or the tokenizer in a .gguf file's metadata.")
      .def(
          "encode",
          [](const Tokenizer& t, const py::str& text, bool add_special_tokens) {
            // The UTF-8 that Python keeps with the str, read in place (it lives as long as `text`).
            // Lone surrogates, which UTF-8 cannot hold, are passed as their surrogatepass bytes.
            Py_ssize_t size = 0;
            const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
            py::bytes surrogates;
            if (data == nullptr) {
              PyErr_Clear();
              surrogates = text.attr("encode")("utf-8", "surrogatepass");
              data = PyBytes_AS_STRING(surrogates.ptr());
              size = PyBytes_GET_SIZE(surrogates.ptr());
            }
            py::gil_scoped_release release;
            return t.encode(std::string_view(data, static_cast<std::size_t>(size)), add_special_tokens);
          },
          py::arg("text"), py::arg("add_special_tokens") = true, "text -> list of ids")
      .def("encode_batch", &Tokenizer::encode_batch, py::arg("texts"), py::arg("add_special_tokens") = true,
           py::call_guard<py::gil_scoped_release>(), "list of texts -> list of id lists")
      .def("decode", &Tokenizer::decode, py::arg("ids"), py::arg("skip_special_tokens") = false,
           py::call_guard<py::gil_scoped_release>(), "ids -> text (invalid UTF-8 becomes U+FFFD)")
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def("token_to_id", &Tokenizer::token_to_id, py::arg("token"))
      .def("id_to_token", &Tokenizer::id_to_token, py::arg("id"))
      .def("is_special", &Tokenizer::is_special, py::arg("id"))
      .def_property_readonly("chat_template", &Tokenizer::chat_template,
                             "The chat template stored with the tokenizer (Jinja text; empty when none).")
      .def(
          "with_special_tokens",
          [](const Tokenizer& t, const std::vector<std::string>& tokens, int32_t first_id) {
            return std::make_shared<Tokenizer>(t.with_special_tokens(tokens, first_id));
          },
          py::arg("tokens"), py::arg("first_id"),
          "A new tokenizer: this one plus `tokens` as atomic special tokens with ids first_id, first_id+1, ...");
  m.def("end_of_turn_ids", &aios::tokenizer::end_of_turn_ids, py::arg("tokenizer"),
        "the tokenizer's special tokens that end a turn or a text: where a reply stops");
}

}  // namespace aios::python
