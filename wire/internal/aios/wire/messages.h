// aios/wire/messages.h — the requests both clients of a host write, and the replies both read,
// written once over the arguments of aios/call_options.h in either tensor vocabulary:
// RemoteBackbone's (at::Tensor, undefined = absent) and the thin client's (Eigen tensors,
// std::optional = absent). No LibTorch.
//
// `write(tensor, v1::Tensor*)` writes any tensor (or mask) the client's vocabulary holds;
// `read(v1::Tensor, field)` reads one reply tensor into the client's type.
// C++20: included by the clients' sources, never by their public headers.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include "aios/call_options.h"
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

// ForwardOptions, with what the client's options add to BasicForwardOptions: recompute (both
// clients' gradient calls) and ids (an in-process caller's extension ids). An extension is the
// caller's to add.
template <class Options, class Write>
void write_options(const Options& o, v1::ForwardOptions* out, const Write& write) {
  if (o.positions) write(*o.positions, out->mutable_positions());
  if (o.mask) write(*o.mask, out->mutable_mask());
  for (int64_t l : o.layers) out->add_layers(l);
  out->set_allow_non_finite(o.allow_non_finite);
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

// ForwardOutput{hidden, layers}.
template <class Output, class Read>
Output read_output(const v1::ForwardResponse& r, const Read& read) {
  Output out;
  out.hidden = read(r.hidden(), "hidden");
  for (const v1::Tensor& layer : r.layers()) out.layers.push_back(read(layer, "layers"));
  return out;
}

}  // namespace aios::wire::messages
AIOS_EXPORT_END
