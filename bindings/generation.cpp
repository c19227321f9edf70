// Generation: its steps and results, Decoder (subclassed in Python for routed generation) with
// DecoderStep, Session (a kept KV cache) and Generation (the iterator of Backbone.stream).
#include "bindings.h"

#include <vector>

#include "aios/ali/generation.h"

namespace aios::python {

namespace {

using aios::ali::Decoder;
using aios::ali::DecoderStep;
using aios::ali::Generation;
using aios::ali::GenerationResult;
using aios::ali::GenerationStep;
using aios::ali::Session;

// aios.Decoder subclassed in Python. Generation runs without the GIL; each call takes it.
class PyDecoder : public Decoder {
 public:
  using Decoder::Decoder;
  void begin(int64_t row) override {
    py::gil_scoped_acquire gil;
    PYBIND11_OVERRIDE(void, Decoder, begin, row);
  }
  DecoderStep step(int64_t row, const at::Tensor& hidden) override {
    py::gil_scoped_acquire gil;
    PYBIND11_OVERRIDE_PURE(DecoderStep, Decoder, step, row, hidden);
  }
};

}  // namespace

void bind_generation(py::module_& m) {
  py::class_<GenerationStep>(m, "GenerationStep", "One step of a generation (Backbone.stream).")
      .def_readonly("index", &GenerationStep::index, "0 for the first generated token")
      .def_readonly("ids", &GenerationStep::ids, "int64 [B]: each row's token, -1 for a row that had finished")
      .def_readonly("hidden", &GenerationStep::hidden, "[B,D]: the final hidden state each token was read from")
      .def_readonly("finished", &GenerationStep::finished, "bool [B]: rows done after this step")
      .def_readonly("routes", &GenerationStep::routes,
                    "int64 [B]: index in routes of the decoder that took this position, -1 for the classifier")
      .def_property_readonly(
          "outputs",
          [](const GenerationStep& s) {
            std::vector<std::optional<at::Tensor>> out;
            for (const at::Tensor& t : s.outputs) out.push_back(optional_tensor(t));
            return out;
          },
          "list of B: the decoder's output for each routed row, None elsewhere");

  py::class_<GenerationResult>(m, "GenerationResult", "Result of Backbone.generate.")
      .def_readonly("ids", &GenerationResult::ids, "int64 [B,N], -1 after a row finished")
      .def_readonly("hidden", &GenerationResult::hidden, "[B,N,D]: the hidden state of every step")
      .def_readonly("lengths", &GenerationResult::lengths, "int64 [B]: tokens per row (stop token included)")
      .def_readonly("routes", &GenerationResult::routes, "int64 [B,N]: GenerationStep.routes of every step");

  py::class_<DecoderStep>(m, "DecoderStep", "What a Decoder returns for one routed position of one row.")
      .def(py::init([](std::optional<at::Tensor> output, std::optional<at::Tensor> latent, int64_t token, bool done) {
             DecoderStep s;
             if (output) s.output = *output;
             if (latent) s.latent = *latent;
             s.token = token;
             s.done = done;
             return s;
           }),
           py::kw_only(), py::arg("output") = py::none(), py::arg("latent") = py::none(), py::arg("token") = -1,
           py::arg("done") = false,
           "output: reported in the step; latent [D] or token: fed at the next position; done: the span ends "
           "(the end token is fed)")
      .def_property_readonly("output", [](const DecoderStep& s) { return optional_tensor(s.output); })
      .def_property_readonly("latent", [](const DecoderStep& s) { return optional_tensor(s.latent); })
      .def_readonly("token", &DecoderStep::token)
      .def_readonly("done", &DecoderStep::done);

  py::class_<Decoder, PyDecoder, std::shared_ptr<Decoder>>(
      m, "Decoder",
      "Takes over a row between a route's start and end tokens (generate/stream routes=[(start, end, decoder)]). "
      "Subclass it: step(row, hidden [D]) -> DecoderStep; begin(row) when a row enters a span.")
      .def(py::init<>())
      .def("begin", &Decoder::begin, py::arg("row"))
      .def("step", &Decoder::step, py::arg("row"), py::arg("hidden"));

  py::class_<Session, std::shared_ptr<Session>>(m, "Session", "A KV cache kept between generations (Backbone.new_session).")
      .def_property_readonly("batch_size", &Session::batch_size)
      .def_property_readonly("length", &Session::length, "cached slots per row")
      .def_property_readonly("next_positions", &Session::next_positions, "int64 [B]: where each row continues")
      .def_property_readonly("bytes", &Session::bytes);

  py::class_<Generation>(m, "Generation", "A generation in progress: iterate for GenerationStep objects.")
      .def("__iter__", [](Generation& g) -> Generation& { return g; })
      .def("__next__", [](Generation& g) {
        std::optional<GenerationStep> step;
        {
          py::gil_scoped_release release;
          step = g.next();
        }
        if (!step) throw py::stop_iteration();
        return std::move(*step);
      });
}

}  // namespace aios::python
