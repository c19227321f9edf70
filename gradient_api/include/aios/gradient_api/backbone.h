// aios/gradient_api/backbone.h — the Gradient API: gradients through the frozen backbone to the
// caller's latents. No weight gradient is ever computed: weights do not require grad, so backward
// runs the input-only half of the work.
//
// Two forms:
//  * handle form: forward_keep() keeps the pass under a handle, vjp(handle, cotangents) returns
//    d latents, release(handle) frees it (or the backbone evicts it; see StoreOwner). The
//    stateless vjp(latents, options, cotangents) recomputes the forward instead.
//  * fused form: forward_backward() computes a loss and d latents in one call, the loss over the
//    vocabulary in chunks so the full [B,T,V] logits never exist at once.
// With a vocabulary extension (ForwardOptions::extension) logits, their cotangents and the losses
// span V+K ids, and both forms also return the gradients of the extension's rows, so that a
// caller can train just those rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <variant>
#include <vector>

#include "aios/ali/backbone.h"
#include "aios/export.h"
#include "aios/gradient_options.h"

AIOS_EXPORT_BEGIN

namespace aios::gradient {

using ali::ForwardOutput;

// A kept pass, until released, evicted or expired (then a kNotFound error; a handle of another
// backbone is kInvalidArgument).
using Handle = std::uint64_t;
// Who a kept pass is charged to. 0, the default, is the owner of every pass kept without one.
// An implementation bounds what kept passes hold (a byte budget, a time-to-live since last use):
// making room for a pass evicts only passes of its own owner, least recently used first, so one
// owner's forwards never evict another owner's passes; when other owners' passes leave too little
// room, the pass is refused (kResourceExhausted) and nothing is evicted. Expiry takes any owner's
// passes: it depends on their own use only.
using StoreOwner = std::uint64_t;

// The forward pass of a gradient call: a forward's options, and what only gradients need.
struct ForwardOptions : ali::ForwardOptions, GradientPassOptions {
  // The vocabulary extension whose classifier rows extend the logits that cotangents and losses
  // refer to (V+K of them), and whose row gradients the call returns.
  std::shared_ptr<const ali::Extension> extension;
  // With an extension: int64/int32 [B,T], the token id each latent was embedded from (any value
  // outside [V, V+K) where it is not an extension token's embedding). The gradient of the
  // extension's embedding rows is gathered from d latents at those positions.
  std::optional<at::Tensor> ids;
  // For a pass kept under a handle: who it is charged to (see StoreOwner). A host sets its caller's
  // tenant here, whatever a remote caller asked.
  StoreOwner store_owner = 0;
};

// The arguments of aios/gradient_options.h over LibTorch's tensors (undefined = absent). A teacher's
// forward (Distillation::teacher_options) is cancelled with the call's own.
using Cotangents = BasicCotangents<ali::TorchTensors>;
using CrossEntropy = BasicCrossEntropy<ali::TorchTensors>;
using Distillation = BasicDistillation<ali::TorchTensors>;
using LossOptions = BasicLossOptions<ali::TorchTensors>;

// What a gradient call returns, each in the backbone's dtype on its device.
struct Gradients {
  at::Tensor latents;  // [B,T,D]: d loss / d latents
  // With an extension of K tokens: d loss / d its rows, [K,D]. embedding_rows needs
  // ForwardOptions::ids (it is undefined without them); classifier_rows comes from the logits.
  at::Tensor embedding_rows;
  at::Tensor classifier_rows;
};

struct KeptForward {
  ForwardOutput output;  // detached copies of what forward() returns
  Handle handle;
  std::size_t bytes = 0;  // the implementation's estimate of the memory the kept pass holds (0: unknown)
  // Passes of the same owner (ForwardOptions::store_owner) dropped while keeping this one: evicted
  // to make room, or expired. Their handles are gone. Empty from a hosted backbone.
  std::vector<Handle> dropped;
};

struct FusedResult {
  at::Tensor loss;    // scalar float32: the mean over all weighted tokens
  at::Tensor losses;  // float32 [B]: the same mean per sequence (0 where a row has no weight)
  Gradients grad;     // of `loss`
};

class Backbone : public ali::Backbone {
 public:
  using ali::Backbone::forward;

  virtual KeptForward forward_keep(const at::Tensor& latents, const ForwardOptions& options = {}) = 0;
  // The gradients for the kept pass (with the extension's rows as they are now); the handle stays
  // valid until released.
  virtual Gradients vjp(Handle handle, const Cotangents& cotangents) = 0;
  virtual void release(Handle handle) = 0;
  // Stateless: recomputes the forward of (latents, options), then as above.
  virtual Gradients vjp(const at::Tensor& latents, const ForwardOptions& options, const Cotangents& cotangents) = 0;
  virtual FusedResult forward_backward(const at::Tensor& latents, const ForwardOptions& options,
                                       const LossOptions& loss) = 0;
  // What the passes kept under handles hold now: how many, and the sum of their memory estimates
  // in bytes. A hosted backbone reports its caller's tenant's passes (what its store quota bounds).
  virtual std::size_t kept_passes() const = 0;
  virtual std::size_t kept_bytes() const = 0;
};

}  // namespace aios::gradient
AIOS_EXPORT_END
