// aios.Backbone, the interface of the local and the remote backbone (the Latent and Gradient APIs,
// extend, generation), with Config, ForwardOutput, gist_mask and LocalBackbone.
#include "bindings.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <pybind11/operators.h>

#include "aios/ali/masks.h"
#include "aios/fail.h"
#include "aios/local/local_backbone.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace aios::python {

namespace {

using aios::ali::Decoder;
using aios::ali::Extension;
using aios::gradient::ForwardOptions;
using aios::ali::GenerateOptions;
using aios::ali::Route;
using aios::ali::Session;
using aios::gradient::Cotangents;
using aios::gradient::Gradients;
using aios::gradient::Handle;
using aios::local::LocalBackbone;
using Interface = aios::gradient::Backbone;  // what both the local and the remote backbone implement
using aios::backbone::dtype_name;
using aios::backbone::parse_device;
using aios::backbone::parse_dtype;

// ForwardOutput plus the handle of a kept pass (None unless keep=True).
struct PyForwardOutput {
  at::Tensor hidden;
  std::vector<at::Tensor> layers;
  std::vector<at::Tensor> routing;
  std::optional<Handle> handle;
};

ForwardOptions forward_options(std::optional<at::Tensor> positions, std::optional<at::Tensor> mask,
                               std::optional<std::vector<int64_t>> layers, bool allow_non_finite = false,
                               bool recompute = false, std::shared_ptr<Extension> extension = nullptr,
                               std::optional<at::Tensor> ids = std::nullopt, bool routing = false) {
  ForwardOptions options;
  options.routing = routing;
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

// generate() and stream(): their keyword arguments (AIOS_GENERATE_ARGS) gathered into
// GenerateOptions, then `run(backbone, latents, options)` without the GIL.
template <typename Run>
auto with_generate_options(Run run) {
  return [run](Interface& b, const at::Tensor& latents, std::optional<at::Tensor> positions,
               std::optional<at::Tensor> mask, int64_t max_new_tokens, double temperature, int64_t top_k, double top_p,
               std::optional<uint64_t> seed, std::optional<std::vector<int64_t>> stop_ids,
               std::shared_ptr<Extension> extension, std::shared_ptr<Session> session, const PyRoutes& routes) {
    GenerateOptions o;
    o.routes = to_routes(routes);
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
    py::gil_scoped_release release;
    return run(b, latents, o);
  };
}

// The keyword arguments generate() and stream() share.
#define AIOS_GENERATE_ARGS                                                                                       \
  py::arg("latents"), py::kw_only(), py::arg("positions") = py::none(), py::arg("mask") = py::none(),            \
      py::arg("max_new_tokens") = 64, py::arg("temperature") = 0.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0, \
      py::arg("seed") = py::none(), py::arg("stop_ids") = py::none(), py::arg("extension") = nullptr,            \
      py::arg("session") = nullptr, py::arg("routes") = py::none()

}  // namespace

void bind_backbone(py::module_& m) {
  py::class_<RopeInfo>(m, "RopeInfo", "Rotary position frequencies of a backbone (read-only; see aios/model_info.h).")
      .def_readonly("type", &RopeInfo::type)
      .def_readonly("theta", &RopeInfo::theta)
      .def_readonly("rotary_dim", &RopeInfo::rotary_dim)
      .def_readonly("factor", &RopeInfo::factor)
      .def_readonly("low_freq_factor", &RopeInfo::low_freq_factor)
      .def_readonly("high_freq_factor", &RopeInfo::high_freq_factor)
      .def_readonly("original_max_positions", &RopeInfo::original_max_positions)
      .def_readonly("attention_factor", &RopeInfo::attention_factor)
      .def(py::self == py::self)
      .def(py::self != py::self)
      .def("__repr__", [](const RopeInfo& r) { return fmt::format("RopeInfo(type='{}', theta={})", r.type, r.theta); });

  py::class_<aios::WeightKind>(m, "WeightKind", "The resident memory of one kind of frozen weights.")
      .def_readonly("kind", &aios::WeightKind::kind,
                    "\"float32\", ..., a stored GGUF type (\"Q4_1\", ...), or \"int8\"/\"int4\" (quantised at load)")
      .def_readonly("tensors", &aios::WeightKind::tensors)
      .def_readonly("elements", &aios::WeightKind::elements)
      .def_readonly("bytes", &aios::WeightKind::bytes)
      .def(py::self == py::self)
      .def(py::self != py::self)
      .def("__repr__", [](const aios::WeightKind& k) {
        return fmt::format("WeightKind(kind='{}', tensors={}, elements={}, bytes={})", k.kind, k.tensors, k.elements,
                           k.bytes);
      });

  // The same description from a local and a hosted backbone (the host sends its own).
  py::class_<ModelInfo>(m, "Config", "The model a backbone runs (read-only; see aios/model_info.h).")
      .def_readonly("architecture", &ModelInfo::architecture)
      .def_readonly("family", &ModelInfo::family)
      .def_readonly("vocab_size", &ModelInfo::vocab_size)
      .def_readonly("hidden_size", &ModelInfo::hidden_size)
      .def_readonly("intermediate_size", &ModelInfo::intermediate_size)
      .def_readonly("num_layers", &ModelInfo::num_layers)
      .def_readonly("num_heads", &ModelInfo::num_heads)
      .def_readonly("num_kv_heads", &ModelInfo::num_kv_heads)
      .def_readonly("head_dim", &ModelInfo::head_dim)
      .def_readonly("max_positions", &ModelInfo::max_positions)
      .def_readonly("norm", &ModelInfo::norm)
      .def_readonly("norm_eps", &ModelInfo::norm_eps)
      .def_readonly("activation", &ModelInfo::activation)
      .def_readonly("rope", &ModelInfo::rope, "RopeInfo, or None for learned positions")
      .def_readonly("qkv_bias", &ModelInfo::qkv_bias)
      .def_readonly("out_bias", &ModelInfo::out_bias)
      .def_readonly("mlp_bias", &ModelInfo::mlp_bias)
      .def_readonly("tie_word_embeddings", &ModelInfo::tie_word_embeddings)
      .def_readonly("sliding_windows", &ModelInfo::sliding_windows, "per layer: the window, or None; [] = none")
      .def_readonly("attention_scale", &ModelInfo::attention_scale)
      .def_readonly("scale_attn_by_inverse_layer_idx", &ModelInfo::scale_attn_by_inverse_layer_idx)
      .def_readonly("dtype", &ModelInfo::dtype)
      .def_readonly("device", &ModelInfo::device)
      .def_readonly("bos_id", &ModelInfo::bos_id)
      .def_readonly("eos_ids", &ModelInfo::eos_ids)
      .def_readonly("pad_id", &ModelInfo::pad_id)
      .def_readonly("weights", &ModelInfo::weights, "\"expanded\", \"stored\", \"int8\" or \"int4\"")
      .def_readonly("storage", &ModelInfo::storage, "[WeightKind]: the weights' memory per kind, largest first")
      .def_property_readonly(
          "weight_bytes",
          [](const ModelInfo& c) {
            int64_t total = 0;
            for (const aios::WeightKind& k : c.storage) total += k.bytes;
            return total;
          },
          "resident bytes of all weights")
      .def(py::self == py::self)
      .def(py::self != py::self)
      .def("__repr__", [](const ModelInfo& c) {
        return fmt::format("Config(architecture='{}', hidden_size={}, num_layers={}, num_heads={}, num_kv_heads={}, "
                           "vocab_size={}, dtype='{}', device='{}')",
                           c.architecture, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size,
                           c.dtype, c.device);
      });

  py::class_<PyForwardOutput>(m, "ForwardOutput", "Result of Backbone.forward.")
      .def_readonly("hidden", &PyForwardOutput::hidden, "[B,T,D] final hidden state, after the final norm")
      .def_readonly("layers", &PyForwardOutput::layers, "list of [B,T,D], one per requested layer index")
      .def_readonly("routing", &PyForwardOutput::routing,
                    "with routing=True: one int64 [B,T,k] per block, the experts each position ran by decreasing "
                    "weight (k = 0 for blocks without experts); else empty")
      .def_readonly("handle", &PyForwardOutput::handle, "handle of the kept pass (keep=True), else None");

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
          [](const py::object& path, const py::object& device, const py::object& dtype, const std::string& weights,
             int64_t group_size, std::optional<std::size_t> store_bytes, std::optional<double> store_ttl) {
            const std::string p = py::str(py::module_::import("os").attr("fspath")(path));
            aios::local::LoadOptions options;
            options.device = parse_device(py::str(device));
            options.dtype = parse_dtype(py::str(dtype));
            options.weights = aios::backbone::parse_weight_storage(weights);
            options.group_size = group_size;
            aios::local::StoreOptions store;
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
          py::arg("weights") = "auto", py::arg("group_size") = aios::backbone::LoadOptions{}.group_size,
          py::arg("store_bytes") = py::none(), py::arg("store_ttl") = py::none(),
          "Loads a Hugging Face checkpoint folder or a .gguf file. dtype: float32, bfloat16, float16 or float64 (or a "
          "torch.dtype), what it computes in. weights: \"auto\" (stored on the CPU, else expanded), \"expanded\" "
          "(converted to dtype at load), \"stored\" (kept as a GGUF file stores them, block-quantised types "
          "included, and decoded per product; CPU only), \"int8\" (float matrices quantised at load per row; "
          "CPU only) or \"int4\" (in groups of group_size values along each row; CPU only). "
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
      .def("generate",
           with_generate_options([](Interface& b, const at::Tensor& latents, const GenerateOptions& o) {
             return b.generate(latents, o);
           }),
          AIOS_GENERATE_ARGS,
          "Generates from latents [B,T,D] with a KV cache -> GenerationResult(ids [B,N], hidden [B,N,D], lengths). "
          "mask: key padding [B,T] for prompts of different lengths; temperature 0 = greedy; top_k, top_p, seed; "
          "stop_ids end a row; extension: its tokens can be generated; session: continue its cache; routes: "
          "[(start_id, end_id, Decoder)], a decoder takes a row from after start_id until it ends the span.")
      .def("stream",
           with_generate_options([](Interface& b, const at::Tensor& latents, const GenerateOptions& o) {
             return b.start_generation(latents, o);
           }),
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
             bool keep, bool recompute, std::shared_ptr<Extension> extension, std::optional<at::Tensor> ids,
             bool routing) {
            const ForwardOptions options =
                forward_options(positions, mask, layers, allow_non_finite, recompute, std::move(extension), ids, routing);
            if (keep) {
              auto kept = b.forward_keep(latents, options);
              return PyForwardOutput{kept.output.hidden, kept.output.layers, kept.output.routing, kept.handle};
            }
            auto out = b.forward(latents, options);
            return PyForwardOutput{out.hidden, out.layers, out.routing, std::nullopt};
          },
          py::arg("latents"), py::kw_only(), py::arg("positions") = py::none(), py::arg("mask") = py::none(),
          py::arg("layers") = py::none(), py::arg("allow_non_finite") = false, py::arg("keep") = false,
          py::arg("recompute") = false, py::arg("extension") = nullptr, py::arg("ids") = py::none(),
          py::arg("routing") = false,
          py::call_guard<py::gil_scoped_release>(),
          "latents [B,T,D] -> ForwardOutput(hidden [B,T,D], layers, handle). positions: int64 [B,T] or [T]; "
          "mask: [B,T] key padding (with causal order) or [B,T,T] full boolean mask; layers: indices in "
          "[0, num_layers] of residual-stream states to return; keep: keep the pass for vjp under .handle; "
          "recompute: keep only the states between blocks and recompute blocks in vjp; extension (with keep): "
          "logits cotangents span its tokens too and vjp returns its row gradients (embedding rows from ids "
          "[B,T], the id each latent was embedded from); routing: also return the experts each position ran, "
          "per block (.routing).")
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
      .def_property_readonly("store_size",
                             py::cpp_function(&Interface::kept_passes, py::call_guard<py::gil_scoped_release>()),
                             "number of kept passes (a hosted backbone: its caller's tenant's)")
      .def_property_readonly("store_bytes",
                             py::cpp_function(&Interface::kept_bytes, py::call_guard<py::gil_scoped_release>()),
                             "estimated bytes of activations held by kept passes (a hosted backbone: its caller's "
                             "tenant's, what its store quota bounds)")
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
      .def_property_readonly("parameter_count", &LocalBackbone::parameter_count);
}

}  // namespace aios::python
