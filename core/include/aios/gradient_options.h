// aios/gradient_options.h — the arguments of the Gradient API's calls as they travel to a backbone
// (cotangents, the fused losses, what a gradient call's forward pass adds), over the tensor
// vocabularies of aios/forward_options.h: gradient::Cotangents, ... in-process (LibTorch), the thin
// client's (Eigen). No LibTorch; C++17.
#pragma once

#include <cstdint>
#include <variant>
#include <vector>

#include "aios/export.h"
#include "aios/forward_options.h"

AIOS_EXPORT_BEGIN

namespace aios {

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
