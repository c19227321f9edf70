// aios/server/messages.h — the requests both clients of a host write, and the replies both read,
// written once over the client's own types: RemoteBackbone's (at::Tensor, undefined = absent) and
// the thin client's (Eigen tensors, std::optional = absent). No LibTorch.
//
// `write(tensor, v1::Tensor*)` writes any tensor the client's types hold; `read(v1::Tensor, field)`
// reads one reply tensor into the client's type. The options, cotangents and losses are read by
// their field names, so each client keeps its own structs (the thin client's masks are two fields
// because an Eigen tensor's rank is part of its type) and one conversion serves both.
// C++20: included by the clients' sources, never by their public headers.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include "aios/export.h"
#include "aios/fail.h"
#include "aios/v1/aios.pb.h"

AIOS_EXPORT_BEGIN

namespace aios::server::messages {

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

// ForwardOptions: positions, mask (and the thin client's full_mask), layers, allow_non_finite, and
// where the client's options have them, recompute and ids. An extension is the caller's to add.
template <class Options, class Write>
void write_options(const Options& o, v1::ForwardOptions* out, const Write& write) {
  if (o.positions) write(*o.positions, out->mutable_positions());
  if constexpr (requires { o.full_mask; }) {
    if (o.mask && o.full_mask) {
      fail(ErrorCode::kInvalidArgument, "mask", "expected a key-padding mask [B,T] or a full mask [B,T,T], got both");
    }
    if (o.full_mask) write(*o.full_mask, out->mutable_mask());
  }
  if (o.mask) write(*o.mask, out->mutable_mask());
  for (int64_t l : o.layers) out->add_layers(l);
  out->set_allow_non_finite(o.allow_non_finite);
  if constexpr (requires { o.recompute; }) out->set_recompute(o.recompute);
  if constexpr (requires { o.ids; }) {
    if (o.ids) write(*o.ids, out->mutable_ids());
  }
}

template <class Cotangents, class Write>
void write_cotangents(const Cotangents& c, v1::Cotangents* out, const Write& write) {
  if (present(c.hidden)) write(value(c.hidden), out->mutable_hidden());
  for (const auto& layer : c.layers) {
    v1::Tensor* slot = out->add_layers();  // left empty for an absent (zero) cotangent
    if (present(layer)) write(value(layer), slot);
  }
  if (present(c.logits)) write(value(c.logits), out->mutable_logits());
}

// The loss of a ForwardBackward request: LossOptions{std::variant<CrossEntropy, Distillation>, chunk_tokens}.
template <class LossOptions, class Write>
void write_loss(const LossOptions& loss, v1::ForwardBackwardRequest* out, const Write& write) {
  using CrossEntropy = std::variant_alternative_t<0, decltype(loss.loss)>;
  using Distillation = std::variant_alternative_t<1, decltype(loss.loss)>;
  out->set_chunk_tokens(loss.chunk_tokens);
  if (const auto* ce = std::get_if<CrossEntropy>(&loss.loss)) {
    auto* m = out->mutable_cross_entropy();
    write(value(ce->targets), m->mutable_targets());
    if (present(ce->weights)) write(value(ce->weights), m->mutable_weights());
    return;
  }
  const auto& d = std::get<Distillation>(loss.loss);
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

}  // namespace aios::server::messages
AIOS_EXPORT_END
