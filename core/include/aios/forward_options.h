// aios/forward_options.h — the options of a forward pass as they travel to a backbone, defined once
// over a vocabulary of tensor types: the in-process interfaces instantiate them with LibTorch's
// tensors (ali::TorchTensors: ali::ForwardOptions), the thin client with Eigen's
// (client::EigenTensors), and the wire writes and reads both through the same code. The Gradient
// API's arguments over the same vocabulary are in aios/gradient_options.h.
// No LibTorch; C++17 (the thin client's public header includes it).
//
// A vocabulary T names:
//   T::Floats<N>, T::Ids<N>  a floating / integer tensor of rank N
//   T::Mask                  a key-padding mask [B,T] or a full mask [B,T,T]
//   T::Maybe<X>              an X that may be absent
// Shapes: B = batch, T = sequence length, D = hidden size, V = vocabulary size (V+K with a
// vocabulary extension of K tokens).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios {

template <class T, int N>
using FloatsOf = typename T::template Floats<N>;
template <class T, int N>
using IdsOf = typename T::template Ids<N>;
template <class T, class X>
using MaybeOf = typename T::template Maybe<X>;

// How a forward pass runs.
template <class T>
struct BasicForwardOptions {
  // int64 [B,T], each in [0, max_positions). Absent: 0..T-1 per row.
  std::optional<IdsOf<T, 2>> positions;
  // Either a key-padding mask [B,T] (true = a real token), combined with causal order and the
  // model's sliding window, or a full mask [B,T,T] ([b,t,s] true = query t may attend key s) used
  // exactly as given instead of causal order and sliding windows (a caller of a windowed model
  // writes the window into the mask). Absent: causal.
  std::optional<typename T::Mask> mask;
  // Residual-stream states to return, by index l in [0, num_layers]: the input of block l, and for
  // l = num_layers the output of the last block before the final norm.
  std::vector<int64_t> layers;
  // NaN or Inf in the latents is an error unless this is set.
  bool allow_non_finite = false;
  // Return which experts each position was sent to (BasicForwardOutput::routing).
  bool routing = false;
};

// What a forward pass returns.
template <class T>
struct BasicForwardOutput {
  FloatsOf<T, 3> hidden;               // [B,T,D], after the final norm
  std::vector<FloatsOf<T, 3>> layers;  // one [B,T,D] per BasicForwardOptions::layers entry, in that order
  // With BasicForwardOptions::routing: one int64 [B,T,k] per block, the experts each position ran,
  // by decreasing routing weight (k = 0 for a block without experts, and for every block of a
  // dense model). Empty otherwise.
  std::vector<IdsOf<T, 3>> routing;
};

}  // namespace aios
AIOS_EXPORT_END
