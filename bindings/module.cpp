// aios._aios — Python bindings of the Latent API. Tensors are torch.Tensor objects of the Python
// torch in the same process: they pass in and out without copies.
#include <chrono>

#include <torch/csrc/utils/pybind.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pybind11/stl.h>

#include "aios/ali/masks.h"
#include "aios/gradient_api/local_backbone.h"
#include "aios/server/remote_backbone.h"
#include "aios/tokenizer_api/chat.h"
#include "aios/tokenizer_api/tokenizer.h"
#include "aios/fail.h"

namespace py = pybind11;

namespace {

using aios::ali::Backbone;
using aios::ali::Decoder;
using aios::ali::DecoderStep;
using aios::ali::Extension;
using aios::ali::ForwardOptions;
using aios::ali::GenerateOptions;
using aios::ali::Generation;
using aios::ali::GenerationResult;
using aios::ali::GenerationStep;
using aios::ali::Route;
using aios::ali::Session;
using aios::gradient::Cotangents;
using aios::gradient::FusedResult;
using aios::gradient::Gradients;
using aios::gradient::Handle;
using aios::gradient::LocalBackbone;
using aios::server::RemoteBackbone;
using Interface = aios::gradient::Backbone;  // what both the local and the remote backbone implement
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

// ForwardOutput plus the handle of a kept pass (None unless keep=True).
struct PyForwardOutput {
  at::Tensor hidden;
  std::vector<at::Tensor> layers;
  std::optional<Handle> handle;
};

ForwardOptions forward_options(std::optional<at::Tensor> positions, std::optional<at::Tensor> mask,
                               std::optional<std::vector<int64_t>> layers, bool allow_non_finite = false,
                               bool recompute = false, std::shared_ptr<Extension> extension = nullptr,
                               std::optional<at::Tensor> ids = std::nullopt) {
  ForwardOptions options;
  options.extension = std::move(extension);
  options.ids = std::move(ids);
  options.recompute = recompute;
  options.positions = std::move(positions);
  options.mask = std::move(mask);
  if (layers) options.layers = *layers;
  options.allow_non_finite = allow_non_finite;
  return options;
}

Cotangents cotangents(std::optional<at::Tensor> hidden, std::optional<std::vector<std::optional<at::Tensor>>> layers,
                      std::optional<at::Tensor> logits) {
  Cotangents c;
  if (hidden) c.hidden = *hidden;
  if (layers) {
    for (auto& t : *layers) c.layers.push_back(t ? *t : at::Tensor());
  }
  if (logits) c.logits = *logits;
  return c;
}

// A vjp without an extension returns d latents; with one, all of Gradients. `compute` runs
// without the GIL.
template <typename F>
py::object vjp_result(F compute) {
  Gradients g;
  {
    py::gil_scoped_release release;
    g = compute();
  }
  if (!g.classifier_rows.defined()) return py::cast(g.latents);
  return py::cast(std::move(g));
}

// Extension rows require grad in Python, so that torch.optim accepts them; aios never records a
// graph through them (it reads them detached).
std::shared_ptr<Extension> trainable(std::shared_ptr<Extension> extension) {
  extension->embedding_rows().requires_grad_(true);
  extension->classifier_rows().requires_grad_(true);
  return extension;
}

std::optional<at::Tensor> optional_tensor(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

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

// routes=[(start_id, end_id, decoder), ...] -> Route list. Each decoder holds a reference to its
// Python object, so that a subclass instance stays alive (its overrides with it) as long as the
// generation does, even when the caller dropped it; the reference is released under the GIL.
// A missing decoder stays null for start_generation to report.
using PyRoutes = std::optional<std::vector<std::tuple<int64_t, int64_t, py::object>>>;
std::vector<Route> to_routes(const PyRoutes& routes) {
  std::vector<Route> out;
  if (!routes) return out;
  for (const auto& [start, end, decoder] : *routes) {
    Route r{start, end, nullptr};
    if (!decoder.is_none()) {
      if (!py::isinstance<Decoder>(decoder)) {
        aios::fail(aios::ErrorCode::kInvalidArgument, fmt::format("routes[{}].decoder", out.size()),
                   "expected an aios.Decoder, got {}", std::string(py::str(py::type::of(decoder).attr("__name__"))));
      }
      auto* raw = decoder.cast<Decoder*>();
      auto* ref = new py::object(decoder);
      r.decoder = std::shared_ptr<Decoder>(raw, [ref](Decoder*) {
        py::gil_scoped_acquire gil;
        delete ref;
      });
    }
    out.push_back(std::move(r));
  }
  return out;
}

GenerateOptions generate_options(std::optional<at::Tensor> positions, std::optional<at::Tensor> mask,
                                 int64_t max_new_tokens, double temperature, int64_t top_k, double top_p,
                                 std::optional<uint64_t> seed, std::optional<std::vector<int64_t>> stop_ids,
                                 std::shared_ptr<Extension> extension, std::shared_ptr<Session> session,
                                 std::vector<Route> routes = {}) {
  GenerateOptions o;
  o.routes = std::move(routes);
  o.positions = std::move(positions);
  o.mask = std::move(mask);
  o.max_new_tokens = max_new_tokens;
  o.sampling.temperature = temperature;
  o.sampling.top_k = top_k;
  o.sampling.top_p = top_p;
  o.sampling.seed = seed;
  if (stop_ids) o.stop_ids = *stop_ids;
  o.extension = std::move(extension);
  o.session = std::move(session);
  return o;
}

// The keyword arguments generate() and stream() share.
#define AIOS_GENERATE_ARGS                                                                                       \
  py::arg("latents"), py::kw_only(), py::arg("positions") = py::none(), py::arg("mask") = py::none(),            \
      py::arg("max_new_tokens") = 64, py::arg("temperature") = 0.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0, \
      py::arg("seed") = py::none(), py::arg("stop_ids") = py::none(), py::arg("extension") = nullptr,            \
      py::arg("session") = nullptr, py::arg("routes") = py::none()

}  // namespace

PYBIND11_MODULE(_aios, m) {
  m.doc() = "aios: a frozen Transformer backbone behind a latent-vector API";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const aios::Error& e) {
      raise_python_error(e);
    } catch (const c10::OutOfMemoryError& e) {
      raise_python_error(aios::Error(aios::ErrorCode::kResourceExhausted, "memory", e.what_without_backtrace()));
    }
  });

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

  py::class_<PyForwardOutput>(m, "ForwardOutput", "Result of Backbone.forward.")
      .def_readonly("hidden", &PyForwardOutput::hidden, "[B,T,D] final hidden state, after the final norm")
      .def_readonly("layers", &PyForwardOutput::layers, "list of [B,T,D], one per requested layer index")
      .def_readonly("handle", &PyForwardOutput::handle, "handle of the kept pass (keep=True), else None");

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

  m.def(
      "gist_mask",
      [](int64_t seq_len, const py::object& begin, const py::object& end) {
        auto as_tensor = [](const py::object& o) {
          if (py::isinstance<py::int_>(o)) return at::tensor({o.cast<int64_t>()});
          if (py::isinstance<py::list>(o) || py::isinstance<py::tuple>(o)) return at::tensor(o.cast<std::vector<int64_t>>());
          return o.cast<at::Tensor>();
        };
        return aios::ali::gist_mask(seq_len, as_tensor(begin), as_tensor(end));
      },
      py::arg("seq_len"), py::arg("begin"), py::arg("end"),
      "bool [B,T,T] gist mask for prompt [0,begin) | gist [begin,end) | rest [end,T); begin/end: int, list or int64 [B]");

  py::class_<Interface, std::shared_ptr<Interface>>(
      m, "Backbone",
      "A frozen backbone, in this process (Backbone.load) or hosted (aios.connect): the same calls either way.")
      .def_static(
          "load",
          [](const py::object& path, const py::object& device, const py::object& dtype, std::optional<std::size_t> store_bytes,
             std::optional<double> store_ttl) {
            const std::string p = py::str(py::module_::import("os").attr("fspath")(path));
            aios::ali::LoadOptions options;
            options.device = parse_device(py::str(device));
            options.dtype = parse_dtype(py::str(dtype));
            aios::gradient::StoreOptions store;
            if (store_bytes) store.max_bytes = *store_bytes;
            if (store_ttl) {
              if (!(*store_ttl > 0) || *store_ttl > 1e9) {
                aios::fail(aios::ErrorCode::kInvalidArgument, "store_ttl", "expected seconds in (0, 1e9], got {}", *store_ttl);
              }
              store.ttl = std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(*store_ttl * 1000)));
            }
            py::gil_scoped_release release;
            return std::shared_ptr<LocalBackbone>(LocalBackbone::load(p, options, store));
          },
          py::arg("path"), py::arg("device") = "cpu", py::arg("dtype") = "float32", py::kw_only(),
          py::arg("store_bytes") = py::none(), py::arg("store_ttl") = py::none(),
          "Loads a Hugging Face checkpoint folder. dtype: float32, bfloat16, float16 or float64 (or a torch.dtype). "
          "store_bytes / store_ttl (seconds) bound the activations kept by forward(keep=True).")
      .def_property_readonly("config", &Interface::config, py::return_value_policy::reference_internal)
      .def_property_readonly("device", [](const Interface& b) { return b.device().str(); })
      .def_property_readonly("dtype", [](const Interface& b) { return dtype_name(b.dtype()); })
      .def(
          "embed",
          [](Interface& b, const at::Tensor& ids, const std::shared_ptr<Extension>& extension) {
            return b.embed(ids, extension.get());
          },
          py::arg("ids"), py::kw_only(), py::arg("extension") = nullptr, py::call_guard<py::gil_scoped_release>(),
          "ids: int64/int32 [B,T] -> latents [B,T,D]; ids of an extension's tokens take its rows")
      .def(
          "extend",
          [](Interface& b, const std::vector<std::string>& tokens, const py::object& init) {
            aios::ali::ExtendOptions options;
            if (py::isinstance<py::str>(init)) {
              if (init.cast<std::string>() != "mean") {
                aios::fail(aios::ErrorCode::kInvalidArgument, "init",
                           "expected \"mean\", a base token id, or (embedding_rows, classifier_rows), got \"{}\"",
                           init.cast<std::string>());
              }
            } else if (py::isinstance<py::int_>(init)) {
              options.init = aios::ali::ExtendOptions::Init::kToken;
              options.token = init.cast<int64_t>();
            } else {
              const auto rows = init.cast<std::pair<at::Tensor, at::Tensor>>();
              options.init = aios::ali::ExtendOptions::Init::kTensors;
              options.embedding_rows = rows.first;
              options.classifier_rows = rows.second;
            }
            py::gil_scoped_release release;
            return trainable(b.extend(tokens, options));
          },
          py::arg("tokens"), py::kw_only(), py::arg("init") = "mean",
          "New tokens with ids V, V+1, ... and their own embedding and classifier rows. init: \"mean\" (of the "
          "base rows), a base token id (copies its rows), or (embedding_rows, classifier_rows) tensors [K,D].")
      .def(
          "generate",
          [](Interface& b, const at::Tensor& latents, std::optional<at::Tensor> positions,
             std::optional<at::Tensor> mask, int64_t max_new_tokens, double temperature, int64_t top_k, double top_p,
             std::optional<uint64_t> seed, std::optional<std::vector<int64_t>> stop_ids,
             std::shared_ptr<Extension> extension, std::shared_ptr<Session> session, const PyRoutes& routes) {
            GenerateOptions o = generate_options(positions, mask, max_new_tokens, temperature, top_k, top_p, seed,
                                                 stop_ids, std::move(extension), std::move(session), to_routes(routes));
            py::gil_scoped_release release;
            return b.generate(latents, o);
          },
          AIOS_GENERATE_ARGS,
          "Generates from latents [B,T,D] with a KV cache -> GenerationResult(ids [B,N], hidden [B,N,D], lengths). "
          "mask: key padding [B,T] for prompts of different lengths; temperature 0 = greedy; top_k, top_p, seed; "
          "stop_ids end a row; extension: its tokens can be generated; session: continue its cache; routes: "
          "[(start_id, end_id, Decoder)], a decoder takes a row from after start_id until it ends the span.")
      .def(
          "stream",
          [](Interface& b, const at::Tensor& latents, std::optional<at::Tensor> positions,
             std::optional<at::Tensor> mask, int64_t max_new_tokens, double temperature, int64_t top_k, double top_p,
             std::optional<uint64_t> seed, std::optional<std::vector<int64_t>> stop_ids,
             std::shared_ptr<Extension> extension, std::shared_ptr<Session> session, const PyRoutes& routes) {
            GenerateOptions o = generate_options(positions, mask, max_new_tokens, temperature, top_k, top_p, seed,
                                                 stop_ids, std::move(extension), std::move(session), to_routes(routes));
            py::gil_scoped_release release;
            return b.start_generation(latents, o);
          },
          AIOS_GENERATE_ARGS, py::keep_alive<0, 1>(),
          "Like generate, as an iterator of GenerationStep (one per generated position), computed as it is read.")
      .def("new_session", &Interface::new_session, "an empty Session to pass to generate/stream")
      .def_property_readonly("chat_template", &Interface::chat_template,
                             "the chat template (Jinja text) stored with the model, or None")
      .def_property_readonly(
          "tokenizer",
          [](Interface& b) { return std::const_pointer_cast<aios::tokenizer::Tokenizer>(b.tokenizer()); },
          "the tokenizer.json that came with the checkpoint, or None")
      .def(
          "forward",
          [](Interface& b, const at::Tensor& latents, std::optional<at::Tensor> positions,
             std::optional<at::Tensor> mask, std::optional<std::vector<int64_t>> layers, bool allow_non_finite,
             bool keep, bool recompute, std::shared_ptr<Extension> extension, std::optional<at::Tensor> ids) {
            const ForwardOptions options =
                forward_options(positions, mask, layers, allow_non_finite, recompute, std::move(extension), ids);
            if (keep) {
              auto kept = b.forward_keep(latents, options);
              return PyForwardOutput{kept.output.hidden, kept.output.layers, kept.handle};
            }
            auto out = b.forward(latents, options);
            return PyForwardOutput{out.hidden, out.layers, std::nullopt};
          },
          py::arg("latents"), py::kw_only(), py::arg("positions") = py::none(), py::arg("mask") = py::none(),
          py::arg("layers") = py::none(), py::arg("allow_non_finite") = false, py::arg("keep") = false,
          py::arg("recompute") = false, py::arg("extension") = nullptr, py::arg("ids") = py::none(),
          py::call_guard<py::gil_scoped_release>(),
          "latents [B,T,D] -> ForwardOutput(hidden [B,T,D], layers, handle). positions: int64 [B,T] or [T]; "
          "mask: [B,T] key padding (with causal order) or [B,T,T] full boolean mask; layers: indices in "
          "[0, num_layers] of residual-stream states to return; keep: keep the pass for vjp under .handle; "
          "recompute: keep only the states between blocks and recompute blocks in vjp; extension (with keep): "
          "logits cotangents span its tokens too and vjp returns its row gradients (embedding rows from ids "
          "[B,T], the id each latent was embedded from).")
      .def(
          "vjp",
          [](Interface& b, Handle handle, std::optional<at::Tensor> grad_hidden,
             std::optional<std::vector<std::optional<at::Tensor>>> grad_layers, std::optional<at::Tensor> grad_logits) {
            return vjp_result([&] { return b.vjp(handle, cotangents(grad_hidden, grad_layers, grad_logits)); });
          },
          py::arg("handle"), py::kw_only(), py::arg("grad_hidden") = py::none(), py::arg("grad_layers") = py::none(),
          py::arg("grad_logits") = py::none(),
          "d latents [B,T,D] of a kept pass, given cotangents for the final hidden state [B,T,D], the kept layers "
          "(list in the order requested, None = zero) and the logits [B,T,V]. For a pass that named an "
          "extension: Gradients(latents, embedding_rows, classifier_rows), logits [B,T,V+K].")
      .def(
          "vjp",
          [](Interface& b, const at::Tensor& latents, std::optional<at::Tensor> positions,
             std::optional<at::Tensor> mask, std::optional<std::vector<int64_t>> layers,
             std::optional<at::Tensor> grad_hidden, std::optional<std::vector<std::optional<at::Tensor>>> grad_layers,
             std::optional<at::Tensor> grad_logits, bool recompute, std::shared_ptr<Extension> extension,
             std::optional<at::Tensor> ids) {
            return vjp_result([&] {
              return b.vjp(latents, forward_options(positions, mask, layers, false, recompute, extension, ids),
                           cotangents(grad_hidden, grad_layers, grad_logits));
            });
          },
          py::arg("latents"), py::kw_only(), py::arg("positions") = py::none(), py::arg("mask") = py::none(),
          py::arg("layers") = py::none(), py::arg("grad_hidden") = py::none(), py::arg("grad_layers") = py::none(),
          py::arg("grad_logits") = py::none(), py::arg("recompute") = false, py::arg("extension") = nullptr,
          py::arg("ids") = py::none(),
          "stateless: recomputes the forward of latents and returns d latents [B,T,D] (Gradients with an extension)")
      .def("release", &Interface::release, py::arg("handle"), py::call_guard<py::gil_scoped_release>(),
           "frees a kept pass")
      .def(
          "forward_backward",
          [](Interface& b, const at::Tensor& latents, std::optional<at::Tensor> targets,
             std::optional<at::Tensor> weights, std::optional<at::Tensor> teacher_logits,
             std::optional<at::Tensor> teacher_probs, std::optional<at::Tensor> teacher_latents,
             std::optional<at::Tensor> teacher_positions, std::optional<at::Tensor> teacher_mask,
             std::optional<at::Tensor> teacher_index, double temperature, std::optional<at::Tensor> positions,
             std::optional<at::Tensor> mask, int64_t chunk_tokens, bool recompute, std::shared_ptr<Extension> extension,
             std::optional<at::Tensor> ids) {
            aios::gradient::LossOptions loss;
            loss.chunk_tokens = chunk_tokens;
            const bool distill = teacher_logits || teacher_probs || teacher_latents;
            if (targets.has_value() == distill) {
              aios::fail(aios::ErrorCode::kInvalidArgument, "targets",
                         "expected either targets (cross-entropy) or a teacher (distillation), not both or neither");
            }
            if (targets) {
              loss.loss = aios::gradient::CrossEntropy{*targets, weights ? *weights : at::Tensor()};
            } else {
              aios::gradient::Distillation d;
              if (teacher_logits) d.teacher_logits = *teacher_logits;
              if (teacher_probs) d.teacher_probs = *teacher_probs;
              if (teacher_latents) d.teacher_latents = *teacher_latents;
              d.teacher_options = forward_options(teacher_positions, teacher_mask, std::nullopt);
              if (teacher_index) d.teacher_index = *teacher_index;
              if (weights) d.weights = *weights;
              d.temperature = temperature;
              loss.loss = d;
            }
            return b.forward_backward(
                latents, forward_options(positions, mask, std::nullopt, false, recompute, std::move(extension), ids), loss);
          },
          py::arg("latents"), py::kw_only(), py::arg("targets") = py::none(), py::arg("weights") = py::none(),
          py::arg("teacher_logits") = py::none(), py::arg("teacher_probs") = py::none(),
          py::arg("teacher_latents") = py::none(), py::arg("teacher_positions") = py::none(),
          py::arg("teacher_mask") = py::none(), py::arg("teacher_index") = py::none(), py::arg("temperature") = 1.0,
          py::arg("positions") = py::none(), py::arg("mask") = py::none(), py::arg("chunk_tokens") = 32,
          py::arg("recompute") = false, py::arg("extension") = nullptr, py::arg("ids") = py::none(),
          py::call_guard<py::gil_scoped_release>(),
          "Fused loss and d latents in one call. Cross-entropy: targets [B,T] (the id position t predicts, no "
          "shift; -100 = ignored, as in torch's cross_entropy), weights [B,T] (0 = ignored). Distillation: teacher_logits or teacher_probs [B,T,V], or "
          "teacher_latents [B,T',D] (+ teacher_positions/teacher_mask) with teacher_index [B,T] (-1 = none). "
          "With an extension, targets and teacher distributions span V+K ids and the result also holds "
          "grad_classifier_rows and (given ids [B,T]) grad_embedding_rows [K,D]. "
          "Returns FusedResult(loss, losses [B], grad_latents [B,T,D], ...).")
      .def(
          "classify",
          [](Interface& b, const at::Tensor& hidden, const std::shared_ptr<Extension>& extension) {
            return b.classify(hidden, extension.get());
          },
          py::arg("hidden"), py::kw_only(), py::arg("extension") = nullptr, py::call_guard<py::gil_scoped_release>(),
          "hidden [..., D] -> logits [..., V], or [..., V+K] with an extension of K tokens");

  py::class_<LocalBackbone, Interface, std::shared_ptr<LocalBackbone>>(m, "LocalBackbone",
                                                                     "A backbone in this process (Backbone.load).")
      .def_property_readonly("parameter_count", &LocalBackbone::parameter_count)
      .def_property_readonly("store_bytes", [](const LocalBackbone& b) { return b.store().bytes(); },
                             "estimated bytes of activations held by kept passes")
      .def_property_readonly("store_size", [](const LocalBackbone& b) { return b.store().size(); },
                             "number of kept passes");

  py::class_<RemoteBackbone, Interface, std::shared_ptr<RemoteBackbone>>(
      m, "RemoteBackbone", "A backbone hosted by `aios serve` (aios.connect); results arrive on the CPU.")
      .def(
          "register_decoder",
          [](RemoteBackbone& b, const std::string& name, const py::object& path) {
            const std::string folder = py::str(py::module_::import("os").attr("fspath")(path));
            py::gil_scoped_release release;
            return b.register_decoder(name, folder);
          },
          py::arg("name"), py::arg("path"),
          "Sends a decoder folder (aios.adapters.save_decoder) to the host as this tenant's decoder `name`; the "
          "result goes in routes=[(start, end, decoder)] of this backbone's generations, which run it on the host.");
  m.def(
      "connect",
      [](const py::object& host, const std::string& api_key, double timeout, bool tls, py::object root_certificates) {
        // A HostProcess (aios.serve) stands for its address and, when it serves TLS, its certificate.
        std::string address;
        if (py::isinstance<py::str>(host)) {
          address = host.cast<std::string>();
        } else if (py::hasattr(host, "address") && py::isinstance<py::str>(host.attr("address"))) {
          address = host.attr("address").cast<std::string>();
          const py::object certificate = py::getattr(host, "certificate", py::none());
          if (root_certificates.is_none() && !certificate.is_none()) root_certificates = certificate;
        } else {
          aios::fail(aios::ErrorCode::kInvalidArgument, "address", "expected \"host:port\" or a HostProcess, got {}",
                     py::str(py::type::of(host).attr("__name__")).cast<std::string>());
        }
        if (!(timeout > 0) || timeout > 1e7) {
          aios::fail(aios::ErrorCode::kInvalidArgument, "timeout", "expected seconds in (0, 1e7], got {}", timeout);
        }
        aios::server::ConnectOptions options;
        options.api_key = api_key;
        options.tls = tls || !root_certificates.is_none();
        if (!root_certificates.is_none()) {
          options.tls_root_certificates = py::str(py::module_::import("os").attr("fspath")(root_certificates));
        }
        options.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
        py::gil_scoped_release release;
        return RemoteBackbone::connect(address, options);
      },
      py::arg("address"), py::kw_only(), py::arg("api_key") = "", py::arg("timeout") = 300.0, py::arg("tls") = false,
      py::arg("root_certificates") = py::none(),
      "A backbone hosted at address (\"host:port\", or the HostProcess that aios.serve returned) by "
      "`aios serve`, used like Backbone.load(...)'s: Latent, Gradient and "
      "Tokenizer APIs, extensions (trained here, their rows sent with the next call after an update) and "
      "generation on the host (routes to decoders registered with register_decoder; no sessions). api_key: for "
      "a host started with --keys. timeout: seconds per call. tls: the host serves TLS; root_certificates: a PEM "
      "file of the certificates to trust (implies tls; default: the system's, or the certificate of a HostProcess "
      "started with tls).");
}
