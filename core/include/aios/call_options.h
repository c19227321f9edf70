// aios/call_options.h — the arguments of the Latent and Gradient calls that travel to a backbone,
// defined once over a vocabulary of tensor types: the in-process interfaces instantiate them with
// LibTorch's tensors (ali::TorchTensors: ali::ForwardOptions, gradient::Cotangents, ...), the thin
// client with Eigen's (client::EigenTensors), and the wire writes both through the same code.
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
#include <variant>
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
};

// What only the forward pass of a gradient call adds to it.
struct GradientPassOptions {
  // Keep just the residual stream between blocks and recompute each block during backward,
  // trading about one more forward for the memory of the activations inside the blocks.
  bool recompute = false;
};

// Gradients of the loss with respect to the outputs of a forward pass; absent = zero.
template <class T>
struct BasicCotangents {
  MaybeOf<T, FloatsOf<T, 3>> hidden;               // [B,T,D] for the final hidden state
  std::vector<MaybeOf<T, FloatsOf<T, 3>>> layers;  // [B,T,D] per ForwardOptions::layers entry, in that order (may be shorter)
  MaybeOf<T, FloatsOf<T, 3>> logits;               // [B,T,V] for classify(hidden)
};

// The target that marks a token as not scored, as torch.nn.CrossEntropyLoss's ignore_index and
// transformers' labels use it.
inline constexpr int64_t kIgnoredTarget = -100;

// Token cross-entropy: mean over weighted tokens of -log softmax(logits[b,t])[targets[b,t]].
// targets[b,t] is the id position t must predict (no implicit shift). A token whose target is
// kIgnoredTarget has weight 0; at least one token must be scored.
template <class T>
struct BasicCrossEntropy {
  // integer [B,T]; in [0,V) wherever the weight is > 0 and the target is not kIgnoredTarget
  // (anything where the weight is 0)
  IdsOf<T, 2> targets;
  MaybeOf<T, FloatsOf<T, 2>> weights;  // [B,T], >= 0; weight 0 = ignored. Absent = all ones.
};

// Distillation: mean over weighted tokens of KL(teacher || student) at `temperature`, with the
// teacher distribution given (logits or probabilities) or computed by the backbone from another
// latent batch (the gist case: the teacher sees the whole prompt).
template <class T>
struct BasicDistillation {
  MaybeOf<T, FloatsOf<T, 3>> teacher_logits;   // [B,T,V], or
  MaybeOf<T, FloatsOf<T, 3>> teacher_probs;    // the same shape (rows sum to 1), or
  MaybeOf<T, FloatsOf<T, 3>> teacher_latents;  // [B,T',D] run through the backbone with teacher_options
  BasicForwardOptions<T> teacher_options;
  // int64 [B,T]: which teacher position's prediction student position t must match; -1 = none.
  // Absent = the same position (requires T' == T).
  MaybeOf<T, IdsOf<T, 2>> teacher_index;
  MaybeOf<T, FloatsOf<T, 2>> weights;  // [B,T] >= 0; absent = 1 where teacher_index >= 0
  double temperature = 1.0;
};

// The loss of a fused forward_backward.
template <class T>
struct BasicLossOptions {
  std::variant<BasicCrossEntropy<T>, BasicDistillation<T>> loss;
  int64_t chunk_tokens = 32;  // tokens per vocabulary-sized logits chunk ([32,V] float32 logits at a time)
};

}  // namespace aios
AIOS_EXPORT_END
