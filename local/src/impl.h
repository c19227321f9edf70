// Internal: LocalBackbone's state and the functions its sources share, each defined in the file of
// its concern (checks.cpp, gradients.cpp; the public calls in local_backbone.cpp, generation.cpp,
// gradients.cpp and losses.cpp).
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "activation_store.h"
#include "aios/local/local_backbone.h"

namespace aios::local {

using backbone::shape_of;

// checks.cpp. Throws Error(kInvalidArgument, name) for an undefined tensor.
void require_defined(const at::Tensor& t, const char* name);
// An integer tensor with values in [0, limit) (what `limit_name` says limit is), as int64 on
// `device`.
at::Tensor checked_index_tensor(const at::Tensor& t, const char* name, int64_t limit,
                                const char* limit_name, c10::Device device);

struct LocalBackbone::Impl {
  Impl(const LocalBackbone& self, std::unique_ptr<backbone::Model> model, std::string path,
       const StoreOptions& store)
      : self(self), model(std::move(model)), path(std::move(path)), store(store) {
    info = backbone::describe(this->model->config());
    info.dtype = backbone::dtype_name(this->model->dtype());
    info.device = this->model->device().str();
    info.weights = backbone::weight_storage_name(this->model->weight_storage());
    info.storage = this->model->storage();
  }

  const LocalBackbone& self;  // what extensions are checked against
  std::unique_ptr<backbone::Model> model;
  ModelInfo info;
  std::string path;  // the checkpoint folder or GGUF file
  std::once_flag tokenizer_once;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  ActivationStore store;

  // checks.cpp: what every call checks before touching the model, each throwing Error
  // (kInvalidArgument) naming the argument.
  // latents [B,T,D] and the forward options -> what the model needs.
  backbone::Attention prepare(const at::Tensor& latents, const ali::ForwardOptions& options) const;
  // A [..., D] state tensor: dtype, device and width of this model.
  void check_states(const at::Tensor& t, const char* name) const;
  // The gradient options' extension and ids against this backbone and latents [B,T,D].
  void check_extension(const gradient::ForwardOptions& options, int64_t B, int64_t T) const;
  // The logits' width: the base vocabulary and the extension's tokens.
  int64_t vocabulary(const ali::Extension* extension) const;

  // gradients.cpp: passes kept for a vjp, and backward through them.
  // Memory a pass of these latents will hold, known before running it.
  std::size_t pass_bytes(const at::Tensor& latents, const gradient::ForwardOptions& options) const;
  // The forward pass keeping its graph or, with options.recompute, the states between blocks.
  // `attention` comes from prepare(latents, options).
  std::shared_ptr<KeptPass> run(const at::Tensor& latents, const backbone::Attention& attention,
                                const gradient::ForwardOptions& options) const;
  // The cotangents of a pass of B x T latents keeping `layers` states, whose outputs are `like`.
  void check_cotangents(int64_t B, int64_t T, std::size_t layers, const ali::Extension* extension,
                        const at::TensorOptions& like, const gradient::Cotangents& c) const;
  gradient::Gradients backward(const KeptPass& pass, const gradient::Cotangents& c,
                               bool retain_graph) const;
};

}  // namespace aios::local
