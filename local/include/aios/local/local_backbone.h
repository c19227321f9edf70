// aios/local/local_backbone.h — the in-process backbone: a checkpoint loaded with LibTorch, behind
// the Latent API (ali::Backbone) and the Gradient API (gradient::Backbone) alike.
//
// A caller of the Latent API alone holds it as an ali::Backbone; the Gradient API's machinery (the
// store of kept passes, the fused losses) lives in this component's sources and stays internal.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "aios/backbone/model.h"
#include "aios/export.h"
#include "aios/gradient_api/backbone.h"

AIOS_EXPORT_BEGIN

namespace aios::local {

using backbone::LoadOptions;

// Bounds of the passes forward_keep() keeps for a later vjp (see gradient_api/backbone.h for how
// owners and eviction work).
struct StoreOptions {
  std::size_t max_bytes = std::size_t{4} << 30;              // budget for all kept passes together
  std::chrono::milliseconds ttl = std::chrono::minutes(10);  // since a pass's last use
};

class LocalBackbone final : public gradient::Backbone {
 public:
  // Loads a Hugging Face checkpoint folder or a GGUF file (see backbone::load_model for the
  // accepted layouts). Throws aios::Error; nothing is half-loaded.
  static std::unique_ptr<LocalBackbone> load(const std::string& path,
                                             const LoadOptions& options = {},
                                             const StoreOptions& store = {});
  // The same over a model loaded already (backbone::load_model with a share of the checkpoint and
  // remote blocks: a pipeline's front, aios/pipeline). `path` is the checkpoint it came from, where
  // the tokenizer and chat template are read.
  static std::unique_ptr<LocalBackbone> wrap(std::unique_ptr<backbone::Model> model, const std::string& path,
                                             const StoreOptions& store = {});
  ~LocalBackbone() override;

  const ModelInfo& config() const override;
  c10::Device device() const override;
  c10::ScalarType dtype() const override;
  int64_t parameter_count() const;
  // The frozen model itself (read-only: its weights never require grad).
  const backbone::Model& model() const;

  // The Latent API (ali/backbone.h).
  std::shared_ptr<ali::Extension> extend(const std::vector<std::string>& tokens,
                                         const ali::ExtendOptions& options = {}) override;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer() override;
  std::optional<std::string> chat_template() override;
  std::unique_ptr<ali::Generation> start_generation(
      const at::Tensor& latents, const ali::GenerateOptions& options = {}) override;
  std::shared_ptr<ali::Session> new_session() override;

  // The calls of the contract (the "aios:" comments of aios.proto), declared from it with the
  // interface's types (gradient_api/backbone.types); kept_passes and kept_bytes count every store
  // owner's passes.
#include "aios/local/calls.inc"

 private:
  LocalBackbone(std::unique_ptr<backbone::Model> model, std::string path,
                const StoreOptions& store);
  struct Impl;  // local/src/impl.h, its functions split over the sources by concern
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::local
AIOS_EXPORT_END
