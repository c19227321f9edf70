// aios/adapters/decoders.h — trainable decoders downstream of the backbone, for routed generation.
//
// A decoder takes a row between a route's start and end tokens (ali::GenerateOptions::routes,
// docs/generation.md): it reads the row's final hidden state at each routed position, reports an
// output, and says what the next position is fed. The decoders here are torch::nn modules as well
// as ali::Decoders, so they train like the encoders (torch::optim on their parameters, with
// gradients reaching the hidden states through the Gradient API) and save and load through the
// decoder registry (storage.h), by which a host or a command line finds them by kind.
#pragma once

#include <map>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "aios/ali/backbone.h"
#include "aios/ali/generation.h"
#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::adapters {

// A fixed-length span read out by a linear head: at each routed position the output is
// head(hidden) [out_features], the next position is fed back(output) [D], and the span ends after
// `span` positions (then the route's end token is fed). For outputs of a known size: a box of
// four coordinates, a pose, an embedding handed to another system.
struct LinearDecoderOptions {
  LinearDecoderOptions(int64_t dim, int64_t out_features, int64_t span = 1)
      : dim(dim), out_features(out_features), span(span) {}
  int64_t dim;           // the backbone's hidden size D
  int64_t out_features;  // the width of each output
  int64_t span;          // routed positions per span, >= 1
};

class LinearDecoderImpl : public torch::nn::Module, public ali::Decoder {
 public:
  explicit LinearDecoderImpl(const LinearDecoderOptions& options);
  LinearDecoderImpl(int64_t dim, int64_t out_features, int64_t span = 1)
      : LinearDecoderImpl(LinearDecoderOptions(dim, out_features, span)) {}
  void reset();
  // hidden: floating [..., D] -> outputs [..., out_features]; differentiable, for training the head.
  at::Tensor forward(const at::Tensor& hidden);
  // -> [..., D]: the latent fed after an output [..., out_features].
  at::Tensor feedback(const at::Tensor& output);
  // Throws Error(kInvalidArgument, "dim") unless dim == the backbone's hidden size.
  void check_fits(const ali::Backbone& backbone) const;

  // ali::Decoder. step() runs without gradients, in the module's dtype and on its device; the
  // output is float32 [out_features] on the CPU, the latent [D] in the module's dtype. The decoder
  // counts each row's positions: serve one generation at a time with one decoder object.
  void begin(int64_t row) override;
  ali::DecoderStep step(int64_t row, const at::Tensor& hidden) override;

  LinearDecoderOptions options;
  torch::nn::Linear head{nullptr};  // "head.weight" [out,D], "head.bias" [out]
  torch::nn::Linear back{nullptr};  // "back.weight" [D,out], "back.bias" [D]

 private:
  std::map<int64_t, int64_t> taken_;  // row -> positions taken in its current span
};
TORCH_MODULE(LinearDecoder);

}  // namespace aios::adapters
AIOS_EXPORT_END
