#include "aios/adapters/encoders.h"

#include <torch/nn/functional/activation.h>

#include "aios/fail.h"
#include "checks.h"

namespace aios::adapters {

LinearProjectionImpl::LinearProjectionImpl(const LinearProjectionOptions& options) : options(options) { reset(); }

void LinearProjectionImpl::reset() {
  require_positive(options.in_features, "in_features");
  require_positive(options.out_features, "out_features");
  linear = register_module(
      "linear", torch::nn::Linear(torch::nn::LinearOptions(options.in_features, options.out_features).bias(options.bias)));
}

at::Tensor LinearProjectionImpl::forward(const at::Tensor& x) {
  require_input(x, options.in_features);
  return linear->forward(x);
}

void LinearProjectionImpl::check_fits(const ali::Backbone& backbone) const {
  require_width(options.out_features, backbone, "out_features");
}

MlpProjectionImpl::MlpProjectionImpl(const MlpProjectionOptions& options) : options(options) {
  if (this->options.hidden_features == 0) this->options.hidden_features = this->options.out_features;
  reset();
}

void MlpProjectionImpl::reset() {
  require_positive(options.in_features, "in_features");
  require_positive(options.out_features, "out_features");
  require_positive(options.hidden_features, "hidden_features");
  fc1 = register_module("fc1", torch::nn::Linear(options.in_features, options.hidden_features));
  fc2 = register_module("fc2", torch::nn::Linear(options.hidden_features, options.out_features));
}

at::Tensor MlpProjectionImpl::forward(const at::Tensor& x) {
  require_input(x, options.in_features);
  return fc2->forward(at::gelu(fc1->forward(x)));
}

void MlpProjectionImpl::check_fits(const ali::Backbone& backbone) const {
  require_width(options.out_features, backbone, "out_features");
}

GistLatentsImpl::GistLatentsImpl(const GistLatentsOptions& options) : options(options) { reset(); }

void GistLatentsImpl::reset() {
  if (options.count < 1) fail(ErrorCode::kInvalidArgument, "count", "expected a gist count >= 1, got {}", options.count);
  require_positive(options.dim, "dim");
  at::Tensor initial;
  if (options.init && options.init->defined()) {
    const at::Tensor& init = *options.init;
    if (init.dim() != 2 || init.size(0) != options.count || init.size(1) != options.dim ||
        !c10::isFloatingType(init.scalar_type())) {
      fail(ErrorCode::kInvalidArgument, "init", "expected a floating tensor [{},{}] (count, dim), got {}", options.count,
           options.dim, fmt::join(init.sizes(), ","));
    }
    initial = init.detach().to(at::kFloat).cpu().clone();
  } else {
    if (!(options.init_std >= 0)) fail(ErrorCode::kInvalidArgument, "init_std", "expected >= 0, got {}", options.init_std);
    initial = at::randn({options.count, options.dim}) * options.init_std;
  }
  latents = register_parameter("latents", initial);
}

at::Tensor GistLatentsImpl::forward(int64_t batch) {
  if (batch < 1) fail(ErrorCode::kInvalidArgument, "batch", "expected >= 1, got {}", batch);
  return latents.unsqueeze(0).expand({batch, options.count, options.dim});
}

void GistLatentsImpl::check_fits(const ali::Backbone& backbone) const { require_width(options.dim, backbone, "dim"); }

}  // namespace aios::adapters
