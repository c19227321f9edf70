#include "aios/adapters/decoders.h"

#include <ATen/core/grad_mode.h>

#include "checks.h"

namespace aios::adapters {

LinearDecoderImpl::LinearDecoderImpl(const LinearDecoderOptions& options) : options(options) { reset(); }

void LinearDecoderImpl::reset() {
  require_positive(options.dim, "dim");
  require_positive(options.out_features, "out_features");
  require_positive(options.span, "span");
  head = register_module("head", torch::nn::Linear(options.dim, options.out_features));
  back = register_module("back", torch::nn::Linear(options.out_features, options.dim));
}

at::Tensor LinearDecoderImpl::forward(const at::Tensor& hidden) {
  require_input(hidden, options.dim);
  return head->forward(hidden);
}

at::Tensor LinearDecoderImpl::feedback(const at::Tensor& output) {
  require_input(output, options.out_features);
  return back->forward(output);
}

void LinearDecoderImpl::check_fits(const ali::Backbone& backbone) const { require_width(options.dim, backbone, "dim"); }

void LinearDecoderImpl::begin(int64_t row) { taken_[row] = 0; }

ali::DecoderStep LinearDecoderImpl::step(int64_t row, const at::Tensor& hidden) {
  at::NoGradGuard no_grad;
  require_input(hidden, options.dim);  // before the conversion, which would accept integers
  const at::Tensor& weight = head->weight;
  const at::Tensor output = forward(hidden.to(weight.device(), weight.scalar_type()));  // [out]
  ali::DecoderStep s;
  s.output = output.to(at::kCPU, at::kFloat);
  if (++taken_[row] >= options.span) {
    s.done = true;  // the end token is fed
  } else {
    s.latent = feedback(output);
  }
  return s;
}

}  // namespace aios::adapters
