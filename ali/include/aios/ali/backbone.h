// aios/ali/backbone.h — the Latent API: a frozen backbone that takes and returns latent vectors.
//
// Shapes: B = batch, T = sequence length, D = hidden size, V = vocabulary size.
// Every call validates its arguments and throws aios::Error (kInvalidArgument, naming the argument,
// the expected and the actual value) before touching the model, so bad input never changes state.
// The weights are read-only after loading: every call may run concurrently from several threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "aios/ali/extension.h"
#include "aios/ali/generation.h"
#include "aios/forward_options.h"
#include "aios/export.h"
#include "aios/model_info.h"

AIOS_EXPORT_BEGIN

namespace aios::ali {

// The tensor vocabulary of the in-process interfaces (aios/forward_options.h): every tensor is an
// at::Tensor, on any device, whatever its rank; one that may be absent is undefined when it is.
// In ForwardOptions, positions may also be [T] (shared by the batch), and a key-padding mask bool or
// integer (non-zero = a real token).
struct TorchTensors {
  template <int N>
  using Floats = at::Tensor;
  template <int N>
  using Ids = at::Tensor;  // int64 (int32 where a call says so)
  using Mask = at::Tensor;
  template <class X>
  using Maybe = X;
};

struct ForwardOptions : BasicForwardOptions<TorchTensors> {
  // Asked before each block (and by the Gradient API between the blocks of every backward): once
  // it returns true, the call stops with Error(kUnavailable, "cancelled") (a host asks whether its
  // caller has left). Empty: never.
  std::function<bool()> cancelled;
};

// Throws Error(kUnavailable, "cancelled") when options.cancelled says so.
void stop_if_cancelled(const std::function<bool()>& cancelled);

using ForwardOutput = BasicForwardOutput<TorchTensors>;

// The interface every backbone implements: in-process (local::LocalBackbone) and hosted
// (server::RemoteBackbone).
class Backbone {
 public:
  virtual ~Backbone() = default;

  // The model it runs (aios/model_info.h); a hosted backbone reports the host's.
  virtual const ModelInfo& config() const = 0;
  virtual c10::Device device() const = 0;
  virtual c10::ScalarType dtype() const = 0;

  // ids: int32 or int64 [B,T], each in [0, V) (or [0, V+K) with an extension of K tokens), any
  // device -> latents [B,T,D] on device(), in dtype().
  virtual at::Tensor embed(const at::Tensor& ids, const Extension* extension = nullptr) = 0;
  // latents: [B,T,D] in dtype() on device(); 1 <= T <= max_positions. Outputs are in dtype() on
  // device() and never require grad (the Gradient API is how gradients flow).
  virtual ForwardOutput forward(const at::Tensor& latents, const ForwardOptions& options = {}) = 0;
  // hidden: [..., D] in dtype() on device() -> logits [..., V], or [..., V+K] with an extension.
  virtual at::Tensor classify(const at::Tensor& hidden, const Extension* extension = nullptr) = 0;

  // A vocabulary extension of `tokens` (ids V, V+1, ...) over this backbone; see extension.h.
  virtual std::shared_ptr<Extension> extend(const std::vector<std::string>& tokens,
                                            const ExtendOptions& options = {}) = 0;
  // The tokenizer that came with the model (tokenizer.json beside the weights, or a GGUF file's), or null when
  // there is none. Throws aios::Error when the file exists but cannot be read.
  virtual std::shared_ptr<const tokenizer::Tokenizer> tokenizer() = 0;
  // The chat template (Jinja text) stored with the model, or nothing (see tokenizer_api/chat.h).
  virtual std::optional<std::string> chat_template() = 0;

  // Generation from latents [B,T,D] (see generation.h): checks the arguments (Error
  // kInvalidArgument naming them) and runs the prompt; each Generation::next() runs one step. The
  // generation reads the backbone: it must not outlive it.
  virtual std::unique_ptr<Generation> start_generation(const at::Tensor& latents,
                                                       const GenerateOptions& options = {}) = 0;
  virtual std::shared_ptr<Session> new_session() = 0;
  // start_generation run to the end; see run_generation.
  GenerationResult generate(const at::Tensor& latents, const GenerateOptions& options = {},
                            const std::function<bool(const GenerationStep&)>& on_step = {}) {
    return run_generation(*start_generation(latents, options), on_step);
  }
};

}  // namespace aios::ali
AIOS_EXPORT_END
