// aios/adapters/encoders.h — trainable encoders that turn a caller's features into latents [.., D]
// for a frozen backbone of hidden size D.
//
// They are ordinary torch::nn modules (parameters in float32 on the CPU unless moved with .to()),
// so a C++ caller trains them with torch::optim and gradients from the Gradient API (or an
// autograd graph through SequenceBuilder's output). The module is the public type here instead of
// a pimpl: torch::nn needs the registered parameters visible to optimisers, clone() and to().
//
// Construction validates the options and throws aios::Error(kInvalidArgument, field) for a zero
// or negative size; check_fits() compares the output width with a backbone's hidden size.
#pragma once

#include <optional>

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "aios/ali/backbone.h"
#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::adapters {

// MiniGPT-4's projection: y = x W^T + b.
struct LinearProjectionOptions {
  LinearProjectionOptions(int64_t in_features, int64_t out_features) : in_features(in_features), out_features(out_features) {}
  int64_t in_features;
  int64_t out_features;  // the backbone's hidden size D
  bool bias = true;
};

class LinearProjectionImpl : public torch::nn::Cloneable<LinearProjectionImpl> {
 public:
  explicit LinearProjectionImpl(const LinearProjectionOptions& options);
  LinearProjectionImpl(int64_t in_features, int64_t out_features)
      : LinearProjectionImpl(LinearProjectionOptions(in_features, out_features)) {}
  void reset() override;
  // x: floating [..., in_features] on the module's device -> [..., out_features], x's dtype if the
  // module has it (parameters are not cast: move the module with .to()).
  at::Tensor forward(const at::Tensor& x);
  // Throws Error(kInvalidArgument, "out_features") unless out_features == backbone hidden size.
  void check_fits(const ali::Backbone& backbone) const;

  LinearProjectionOptions options;
  torch::nn::Linear linear{nullptr};  // parameters "linear.weight" [out,in], "linear.bias" [out]
};
TORCH_MODULE(LinearProjection);

// LLaVA-1.5's projection: Linear(in, hidden) -> GELU (exact, erf) -> Linear(hidden, out).
struct MlpProjectionOptions {
  MlpProjectionOptions(int64_t in_features, int64_t out_features, int64_t hidden_features = 0)
      : in_features(in_features), out_features(out_features), hidden_features(hidden_features) {}
  int64_t in_features;
  int64_t out_features;     // the backbone's hidden size D
  int64_t hidden_features;  // 0 = out_features, as LLaVA-1.5
};

class MlpProjectionImpl : public torch::nn::Cloneable<MlpProjectionImpl> {
 public:
  explicit MlpProjectionImpl(const MlpProjectionOptions& options);
  MlpProjectionImpl(int64_t in_features, int64_t out_features, int64_t hidden_features = 0)
      : MlpProjectionImpl(MlpProjectionOptions(in_features, out_features, hidden_features)) {}
  void reset() override;
  // x: floating [..., in_features] -> [..., out_features].
  at::Tensor forward(const at::Tensor& x);
  void check_fits(const ali::Backbone& backbone) const;  // as LinearProjection

  MlpProjectionOptions options;             // hidden_features resolved (never 0 after construction)
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};  // "fc1.weight" [hidden,in], ..., "fc2.bias" [out]
};
TORCH_MODULE(MlpProjection);

// n trainable latent vectors (gist tokens / soft prompt), the same for every row of a batch.
struct GistLatentsOptions {
  GistLatentsOptions(int64_t count, int64_t dim) : count(count), dim(dim) {}
  int64_t count;  // n >= 1
  int64_t dim;    // the backbone's hidden size D
  double init_std = 0.02;  // normal(0, init_std) when no init is given: small against token embeddings
  // floating [n,D] (any device): initial values, copied as float32 (e.g. the embeddings of a
  // prompt's tokens, a common soft-prompt start).
  std::optional<at::Tensor> init;
};

class GistLatentsImpl : public torch::nn::Cloneable<GistLatentsImpl> {
 public:
  explicit GistLatentsImpl(const GistLatentsOptions& options);
  GistLatentsImpl(int64_t count, int64_t dim) : GistLatentsImpl(GistLatentsOptions(count, dim)) {}
  void reset() override;
  // -> [batch,n,D]: the vectors broadcast over the batch (a view; gradients sum over rows).
  // batch >= 1, else Error(kInvalidArgument, "batch").
  at::Tensor forward(int64_t batch);
  void check_fits(const ali::Backbone& backbone) const;  // Error(kInvalidArgument, "dim") unless D matches

  GistLatentsOptions options;
  at::Tensor latents;  // parameter "latents" [n,D]
};
TORCH_MODULE(GistLatents);

}  // namespace aios::adapters
AIOS_EXPORT_END
