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
#include "aios/export.h"
#include "aios/model_info.h"

AIOS_EXPORT_BEGIN

namespace aios::ali {

struct ForwardOptions {
  // int64 [B,T] (or [T], shared by the batch), each in [0, max_positions). Default: 0..T-1 per row.
  std::optional<at::Tensor> positions;
  // Either a key-padding mask [B,T] (bool or integer; true/non-zero = a real token), combined with
  // causal order and the model's sliding window, or a full mask [B,T,T] (bool; [b,t,s] true = query t
  // may attend key s) used exactly as given instead of causal order and sliding windows (a caller
  // of a windowed model writes the window into the mask). Any device. Default: causal.
  std::optional<at::Tensor> mask;
  // Residual-stream states to return, by index l in [0, num_layers]: the input of block l, and for
  // l = num_layers the output of the last block before the final norm.
  std::vector<int64_t> layers;
  // NaN or Inf in the latents is an error unless this is set.
  bool allow_non_finite = false;
  // Asked before each block (and by the Gradient API between the blocks of every backward): once
  // it returns true, the call stops with Error(kUnavailable, "cancelled") (a host asks whether its
  // caller has left). Empty: never.
  std::function<bool()> cancelled;
};

// Throws Error(kUnavailable, "cancelled") when options.cancelled says so.
void stop_if_cancelled(const std::function<bool()>& cancelled);

struct ForwardOutput {
  at::Tensor hidden;               // [B,T,D], after the final norm
  std::vector<at::Tensor> layers;  // one [B,T,D] per ForwardOptions::layers entry, in that order
};

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
