#include "aios/adapters/audio.h"

#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <fmt/ranges.h>

#include "aios/fail.h"
#include "checks.h"

namespace aios::adapters {

namespace {

double hz_to_mel(double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); }

// Upper bounds keep a manifest's settings from asking for absurd allocations (storage.cpp reads
// these sizes before any weight bounds them).
void require_range(int64_t value, int64_t most, const char* field) {
  if (value < 1 || value > most) fail(ErrorCode::kInvalidArgument, field, "expected 1 to {}, got {}", most, value);
}

void check_features(const LogMelOptions& o) {
  require_range(o.sample_rate, kMaxSampleRate, "sample_rate");
  require_range(o.n_fft, kMaxFft, "n_fft");
  require_range(o.hop_length, kMaxFft, "hop_length");
  require_positive(o.n_mels, "n_mels");
}

}  // namespace

int64_t frame_count(int64_t samples, const LogMelOptions& options) { return samples / options.hop_length + 1; }

at::Tensor mel_filters(const LogMelOptions& options) {
  check_features(options);
  const int64_t n_freqs = options.n_fft / 2 + 1;
  const double top = options.sample_rate / 2.0;
  // Triangles between mel-spaced corners, computed in double so both languages round once, at the end.
  const at::Tensor freqs = at::linspace(0, top, n_freqs, at::kDouble);
  at::Tensor corners = at::linspace(hz_to_mel(0), hz_to_mel(top), options.n_mels + 2, at::kDouble);
  corners = 700.0 * (at::pow(10.0, corners / 2595.0) - 1.0);
  const at::Tensor widths = corners.slice(0, 1) - corners.slice(0, 0, -1);           // [n_mels+1]
  const at::Tensor slopes = corners.unsqueeze(0) - freqs.unsqueeze(1);                 // [n_freqs, n_mels+2]
  const at::Tensor down = -slopes.slice(1, 0, -2) / widths.slice(0, 0, -1);           // rising edge
  const at::Tensor up = slopes.slice(1, 2) / widths.slice(0, 1);                       // falling edge
  return at::clamp_min(at::minimum(down, up), 0).t().contiguous().to(at::kFloat);  // [n_mels, n_freqs]
}

at::Tensor log_mel(const at::Tensor& waveform, const LogMelOptions& options) {
  check_features(options);
  if (!waveform.defined() || waveform.dim() < 1 || waveform.dim() > 2 || !c10::isFloatingType(waveform.scalar_type()) ||
      waveform.size(-1) <= options.n_fft / 2) {
    const std::string got = waveform.defined()
                                ? fmt::format("{} [{}]", c10::toString(waveform.scalar_type()), fmt::join(waveform.sizes(), ","))
                                : std::string("none");
    fail(ErrorCode::kInvalidArgument, "waveform", "expected a floating tensor [N] or [B,N] with N > {} (n_fft / 2), got {}",
         options.n_fft / 2, got);
  }
  const at::Tensor x = waveform.dim() == 1 ? waveform.unsqueeze(0) : waveform;  // [B,N]
  const at::Tensor window = at::hann_window(options.n_fft, /*periodic=*/true, x.options().dtype(at::kFloat));
  const at::Tensor spectrum = at::stft(x.to(at::kFloat), options.n_fft, options.hop_length, options.n_fft, window,
                                       /*center=*/true, "reflect", /*normalized=*/false, /*onesided=*/true,
                                       /*return_complex=*/true);  // [B, n_fft/2+1, F]
  const at::Tensor power = at::abs(spectrum).pow(2);
  const at::Tensor mel = at::matmul(mel_filters(options).to(power.device()), power);  // [B, n_mels, F]
  at::Tensor logs = at::log10(at::clamp_min(mel, 1e-10));
  const at::Tensor floor = std::get<0>(logs.flatten(1).max(1)).sub(8.0).view({-1, 1, 1});
  logs = (at::maximum(logs, floor) + 4.0) / 4.0;
  logs = logs.transpose(1, 2).contiguous();  // [B, F, n_mels]
  return waveform.dim() == 1 ? logs.squeeze(0) : logs;
}

AudioEncoderImpl::AudioEncoderImpl(const AudioEncoderOptions& options) : options(options) { reset(); }

void AudioEncoderImpl::reset() {
  require_positive(options.out_features, "out_features");
  check_features(options.features);
  require_positive(options.channels, "channels");
  if (options.layers < 0) fail(ErrorCode::kInvalidArgument, "layers", "expected >= 0, got {}", options.layers);
  const int64_t C = options.channels;
  conv_in = register_module("conv_in", torch::nn::Conv1d(torch::nn::Conv1dOptions(options.features.n_mels, C, 3).padding(1)));
  convs = register_module("convs", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.layers; ++i) {
    convs->push_back(torch::nn::Conv1d(torch::nn::Conv1dOptions(C, C, 3).stride(2).padding(1)));
  }
  // He initialisation for the GELU convolutions: torch's default (uniform, gain 1/sqrt(3)) shrinks
  // activations about threefold per layer, so after a few layers every clip's latents look alike and
  // training through a frozen backbone barely moves them.
  torch::NoGradGuard no_grad;
  std::vector<torch::nn::Conv1dImpl*> layers{conv_in.get()};
  for (const auto& layer : *convs) layers.push_back(layer->as<torch::nn::Conv1d>());
  for (torch::nn::Conv1dImpl* conv : layers) {
    torch::nn::init::kaiming_normal_(conv->weight, 0, torch::kFanIn, torch::kReLU);
    conv->bias.zero_();
  }
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  proj = register_module("proj", torch::nn::Linear(C, options.out_features));
}

at::Tensor AudioEncoderImpl::forward(const at::Tensor& features) {
  require_input(features, options.features.n_mels);
  if (features.dim() < 2 || features.dim() > 3 || features.size(-2) < 1) {
    fail(ErrorCode::kInvalidArgument, "x", "expected features [F,{0}] or [B,F,{0}] with F >= 1, got [{1}]",
         options.features.n_mels, fmt::join(features.sizes(), ","));
  }
  const at::Tensor& weight = conv_in->weight;
  at::Tensor x = (features.dim() == 2 ? features.unsqueeze(0) : features).to(weight.scalar_type()).transpose(1, 2);
  x = at::gelu(conv_in->forward(x));  // [B, C, F]
  for (const auto& layer : *convs) x = at::gelu(layer->as<torch::nn::Conv1d>()->forward(x));
  x = proj->forward(norm->forward(x.transpose(1, 2)));  // [B, L, D]
  return features.dim() == 2 ? x.squeeze(0) : x;
}

at::Tensor AudioEncoderImpl::encode(const at::Tensor& waveform) { return forward(log_mel(waveform, options.features)); }

int64_t AudioEncoderImpl::latent_count(int64_t frames) const {
  for (int64_t i = 0; i < options.layers; ++i) frames = (frames + 1) / 2;
  return frames;
}

void AudioEncoderImpl::check_fits(const ali::Backbone& backbone) const {
  require_width(options.out_features, backbone, "out_features");
}

}  // namespace aios::adapters
