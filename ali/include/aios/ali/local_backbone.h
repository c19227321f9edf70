// aios/ali/local_backbone.h — the in-process Backbone over a checkpoint loaded with LibTorch.
#pragma once

#include <memory>
#include <string>

#include "aios/ali/backbone.h"
#include "aios/backbone/model.h"

namespace aios::ali {

using backbone::LoadOptions;

class LocalBackbone final : public Backbone {
 public:
  // Loads a Hugging Face checkpoint folder (see backbone::load_model for the accepted layouts).
  // Throws aios::Error; nothing is half-loaded.
  static std::unique_ptr<LocalBackbone> load(const std::string& path, const LoadOptions& options = {});

  ~LocalBackbone() override;

  const ModelConfig& config() const override;
  c10::Device device() const override;
  c10::ScalarType dtype() const override;
  int64_t parameter_count() const;

  at::Tensor embed(const at::Tensor& ids, const Extension* extension = nullptr) override;
  ForwardOutput forward(const at::Tensor& latents, const ForwardOptions& options = {}) override;
  at::Tensor classify(const at::Tensor& hidden, const Extension* extension = nullptr) override;
  std::shared_ptr<Extension> extend(const std::vector<std::string>& tokens, const ExtendOptions& options = {}) override;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer() override;
  std::optional<std::string> chat_template() override;
  std::unique_ptr<Generation> start_generation(const at::Tensor& latents, const GenerateOptions& options = {}) override;
  std::shared_ptr<Session> new_session() override;

  // For layers built on this one (the Gradient API): checks `latents` and `options` exactly as
  // forward() does and returns what the model needs; throws aios::Error like forward().
  backbone::Attention prepare(const at::Tensor& latents, const ForwardOptions& options) const;
  // Checks a [..., D] state tensor (dtype, device, width) as classify() does; `name` goes into errors.
  void check_hidden(const at::Tensor& hidden, const char* name) const;
  // The frozen model itself (read-only).
  const backbone::Model& model() const;

 private:
  LocalBackbone(std::unique_ptr<backbone::Model> model, std::string path);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::ali
