// aios/wire/messages.h — the messages of the Latent and Gradient calls in both directions, each
// field mapped once, over the arguments of aios/forward_options.h and aios/gradient_options.h in
// either tensor vocabulary: the clients write requests and read replies (RemoteBackbone:
// at::Tensor, undefined = absent; the thin client: Eigen tensors, std::optional = absent), the host
// reads requests and writes replies.
// No LibTorch.
//
// `write(tensor, v1::Tensor*)` writes any tensor (or mask) of the caller's vocabulary;
// `read(v1::Tensor, field)` reads one reply tensor into the client's type; the host reads requests
// through an object whose tensor(t, field) reads a tensor as sent and floating(t, field) one in its
// backbone's dtype and device (what each checks is the host's).
// C++20: included by the clients' and the host's sources, never by a public header.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "aios/gradient_options.h"
#include "aios/export.h"
#include "aios/fail.h"
#include "aios/v1/aios.pb.h"

AIOS_EXPORT_BEGIN

namespace aios::wire::messages {

// An optional tensor, or a tensor whose default value means absent (defined()), or one always there.
template <class T>
bool present(const std::optional<T>& t) {
  return t.has_value();
}
template <class T>
const T& value(const std::optional<T>& t) {
  return *t;
}
template <class T>
bool present(const T& t) {
  if constexpr (requires { t.defined(); }) {
    return t.defined();
  } else {
    return true;
  }
}
template <class T>
const T& value(const T& t) {
  return t;
}

// A pointer is present when it is not null.
template <class T>
bool present(const T* p) {
  return p != nullptr;
}

// What generated client code does with each parameter of a call: `make` either returns the
// parameter's field, a message, which `put(value, field)` fills (called only for a present
// value, so that an absent one leaves the field unset), or sets a scalar field with the value.
template <class T, class Make, class Put>
void write_field(const T& value, Make make, const Put& put) {
  if constexpr (std::is_invocable_v<Make>) {
    if (present(value)) put(value, make());
  } else {
    make(value);
  }
}

// A number of a reply as the call's type (a count as std::size_t, say): one out of its range is
// the host's fault, kDataLoss.
template <class T, class V>
T read_number(V v, const char* field) {
  if (!std::in_range<T>(v)) fail(ErrorCode::kDataLoss, field, "malformed reply from the host: {} is out of range", v);
  return static_cast<T>(v);
}

// ---- requests: written by the clients, read by the host ----

// ForwardOptions, with what the client's options add to BasicForwardOptions: recompute (both
// clients' gradient calls) and ids (an in-process caller's extension ids). An extension is the
// caller's to add.
template <class Options, class Write>
void write_options(const Options& o, v1::ForwardOptions* out, const Write& write) {
  if (o.positions) write(*o.positions, out->mutable_positions());
  if (o.mask) write(*o.mask, out->mutable_mask());
  for (int64_t l : o.layers) out->add_layers(l);
  out->set_allow_non_finite(o.allow_non_finite);
  out->set_routing(o.routing);
  if constexpr (std::is_base_of_v<GradientPassOptions, Options>) out->set_recompute(o.recompute);
  if constexpr (requires { o.ids; }) {
    if (o.ids) write(*o.ids, out->mutable_ids());
  }
}

template <class T, class Write>
void write_cotangents(const BasicCotangents<T>& c, v1::Cotangents* out, const Write& write) {
  if (present(c.hidden)) write(value(c.hidden), out->mutable_hidden());
  for (const auto& layer : c.layers) {
    v1::Tensor* slot = out->add_layers();  // left empty for an absent (zero) cotangent
    if (present(layer)) write(value(layer), slot);
  }
  if (present(c.logits)) write(value(c.logits), out->mutable_logits());
}

// The loss of a ForwardBackward request.
template <class T, class Write>
void write_loss(const BasicLossOptions<T>& loss, v1::ForwardBackwardRequest* out, const Write& write) {
  out->set_chunk_tokens(loss.chunk_tokens);
  if (const auto* ce = std::get_if<BasicCrossEntropy<T>>(&loss.loss)) {
    auto* m = out->mutable_cross_entropy();
    write(ce->targets, m->mutable_targets());
    if (present(ce->weights)) write(value(ce->weights), m->mutable_weights());
    return;
  }
  const auto& d = std::get<BasicDistillation<T>>(loss.loss);
  auto* m = out->mutable_distillation();
  if (present(d.teacher_logits)) write(value(d.teacher_logits), m->mutable_teacher_logits());
  if (present(d.teacher_probs)) write(value(d.teacher_probs), m->mutable_teacher_probs());
  if (present(d.teacher_latents)) {
    write(value(d.teacher_latents), m->mutable_teacher_latents());
    write_options(d.teacher_options, m->mutable_teacher_options(), write);
  }
  if (present(d.teacher_index)) write(value(d.teacher_index), m->mutable_teacher_index());
  if (present(d.weights)) write(value(d.weights), m->mutable_weights());
  m->set_temperature(d.temperature);
}

// ForwardOptions' fields that travel, as write_options writes them; what the host adds (an extension, a
// cancellation, its own limits) is the host's to add.
template <class Options, class In>
void read_options(const v1::ForwardOptions& o, const std::string& field, In& in, Options* out) {
  if (o.has_positions()) out->positions = in.tensor(o.positions(), field + ".positions");
  if (o.has_mask()) out->mask = in.tensor(o.mask(), field + ".mask");
  out->layers.assign(o.layers().begin(), o.layers().end());
  out->allow_non_finite = o.allow_non_finite();
  out->routing = o.routing();
  if constexpr (std::is_base_of_v<GradientPassOptions, Options>) out->recompute = o.recompute();
  if constexpr (requires { out->ids; }) {
    if (o.has_ids()) out->ids = in.tensor(o.ids(), field + ".ids");
  }
}

template <class T, class In>
BasicCotangents<T> read_cotangents(const v1::Cotangents& c, In& in) {
  BasicCotangents<T> out;
  if (c.has_hidden()) out.hidden = in.floating(c.hidden(), "cotangents.hidden");
  for (int i = 0; i < c.layers_size(); ++i) {
    const v1::Tensor& layer = c.layers(i);
    // A layer cotangent sent as an empty message stands for zero.
    out.layers.push_back(layer.dtype() == v1::DTYPE_UNSPECIFIED && layer.shape_size() == 0
                             ? MaybeOf<T, FloatsOf<T, 3>>()
                             : in.floating(layer, "cotangents.layers[" + std::to_string(i) + "]"));
  }
  if (c.has_logits()) out.logits = in.floating(c.logits(), "cotangents.logits");
  return out;
}

// The loss of a ForwardBackward request. A teacher's latents and options are read as a call's own
// (in.latents(t, field), in.options(message, field)).
template <class T, class In>
BasicLossOptions<T> read_loss(const v1::ForwardBackwardRequest& r, In& in) {
  BasicLossOptions<T> loss;
  if (r.has_chunk_tokens()) loss.chunk_tokens = r.chunk_tokens();
  if (r.has_cross_entropy()) {
    const auto& ce = r.cross_entropy();
    BasicCrossEntropy<T> out{in.tensor(ce.targets(), "cross_entropy.targets"), {}};
    if (ce.has_weights()) out.weights = in.tensor(ce.weights(), "cross_entropy.weights");
    loss.loss = std::move(out);
  } else if (r.has_distillation()) {
    const auto& d = r.distillation();
    BasicDistillation<T> out;
    if (d.has_teacher_logits()) out.teacher_logits = in.floating(d.teacher_logits(), "distillation.teacher_logits");
    if (d.has_teacher_probs()) out.teacher_probs = in.floating(d.teacher_probs(), "distillation.teacher_probs");
    if (d.has_teacher_latents()) {
      out.teacher_latents = in.latents(d.teacher_latents(), "distillation.teacher_latents");
      out.teacher_options = in.options(d.teacher_options(), "distillation.teacher_options");
    }
    if (d.has_teacher_index()) out.teacher_index = in.tensor(d.teacher_index(), "distillation.teacher_index");
    if (d.has_weights()) out.weights = in.tensor(d.weights(), "distillation.weights");
    if (d.has_temperature()) out.temperature = d.temperature();
    loss.loss = std::move(out);
  } else {
    fail(ErrorCode::kInvalidArgument, "loss", "expected cross_entropy or distillation, got neither");
  }
  return loss;
}

// ---- replies: written by the host, read by the clients ----

template <class Output, class Write>
void write_output(const Output& output, v1::ForwardResponse* out, const Write& write) {
  write(output.hidden, out->mutable_hidden());
  for (const auto& layer : output.layers) write(layer, out->add_layers());
  for (const auto& experts : output.routing) write(experts, out->add_routing());
}

// Gradients{latents, embedding_rows, classifier_rows}: the rows where present.
template <class Gradients, class Write>
void write_gradients(const Gradients& g, v1::Gradients* out, const Write& write) {
  write(g.latents, out->mutable_latents());
  if (present(g.embedding_rows)) write(value(g.embedding_rows), out->mutable_embedding_rows());
  if (present(g.classifier_rows)) write(value(g.classifier_rows), out->mutable_classifier_rows());
}

// ForwardOutput{hidden, layers, routing}: `read` gives floating tensors, `read_ids` integer ones.
template <class Output, class Read, class ReadIds>
Output read_output(const v1::ForwardResponse& r, const Read& read, const ReadIds& read_ids) {
  Output out;
  out.hidden = read(r.hidden(), "hidden");
  for (const v1::Tensor& layer : r.layers()) out.layers.push_back(read(layer, "layers"));
  for (const v1::Tensor& experts : r.routing()) out.routing.push_back(read_ids(experts, "routing"));
  return out;
}

}  // namespace aios::wire::messages
AIOS_EXPORT_END
