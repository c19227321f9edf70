// aios/gradient_api/local_backbone.h — the in-process backbone with Latent and Gradient APIs.
#pragma once

#include <memory>
#include <string>

#include "aios/ali/local_backbone.h"
#include "aios/gradient_api/backbone.h"

namespace aios::gradient {

class LocalBackbone final : public Backbone {
 public:
  static std::unique_ptr<LocalBackbone> load(const std::string& path, const ali::LoadOptions& options = {},
                                             const StoreOptions& store = {});
  ~LocalBackbone() override;

  const ali::ModelConfig& config() const override;
  c10::Device device() const override;
  c10::ScalarType dtype() const override;
  int64_t parameter_count() const;
  const backbone::Model& model() const;
  const ActivationStore& store() const;

  at::Tensor embed(const at::Tensor& ids, const ali::Extension* extension = nullptr) override;
  ForwardOutput forward(const at::Tensor& latents, const ForwardOptions& options = {}) override;
  at::Tensor classify(const at::Tensor& hidden, const ali::Extension* extension = nullptr) override;
  std::shared_ptr<ali::Extension> extend(const std::vector<std::string>& tokens,
                                         const ali::ExtendOptions& options = {}) override;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer() override;
  std::optional<std::string> chat_template() override;
  std::unique_ptr<ali::Generation> start_generation(const at::Tensor& latents,
                                                    const ali::GenerateOptions& options = {}) override;
  std::shared_ptr<ali::Session> new_session() override;

  KeptForward forward_keep(const at::Tensor& latents, const ForwardOptions& options = {}) override;
  Gradients vjp(Handle handle, const Cotangents& cotangents) override;
  void release(Handle handle) override;
  Gradients vjp(const at::Tensor& latents, const ForwardOptions& options, const Cotangents& cotangents) override;
  FusedResult forward_backward(const at::Tensor& latents, const ForwardOptions& options,
                               const LossOptions& loss) override;

 private:
  LocalBackbone(std::unique_ptr<ali::LocalBackbone> inner, const StoreOptions& store);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::gradient
