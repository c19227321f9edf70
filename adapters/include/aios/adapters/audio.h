// aios/adapters/audio.h — sound into latents: log-mel features and a convolutional encoder that
// turns them into a few latents per second for a frozen backbone of hidden size D.
//
// The encoder is the upstream half of a voice interface that keeps what a transcript loses (pitch,
// speed, who spoke, what else was heard): trained from scratch through the frozen backbone with
// the Gradient API, saved and loaded by kind ("audio_encoder") like the other encoders
// (storage.h). Its features are defined here, not borrowed from another library, so that C++ and
// Python (aios.adapters.log_mel) compute the same numbers from the same samples.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "aios/ali/backbone.h"
#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::adapters {

// Whisper-style log-mel features: power spectrum of a periodic-Hann STFT (centred, reflect-padded),
// an HTK-scale triangular mel filterbank from 0 Hz to sample_rate / 2, log10 (floor 1e-10), values
// more than 8 below each clip's maximum raised to it, then (x + 4) / 4.
struct LogMelOptions {
  int64_t sample_rate = 16000;  // 1 to kMaxSampleRate
  int64_t n_fft = 400;          // 25 ms windows at 16 kHz; 1 to kMaxFft
  int64_t hop_length = 160;     // 10 ms: 100 frames per second; 1 to kMaxFft
  int64_t n_mels = 64;
};
inline constexpr int64_t kMaxSampleRate = 768000;
inline constexpr int64_t kMaxFft = 1 << 16;

// waveform: floating [N] or [B,N], samples at options.sample_rate, N > n_fft / 2 (the reflect
// padding needs that many) -> float32 [F,n_mels] or [B,F,n_mels] on the waveform's device,
// F = frame_count(N). Throws Error(kInvalidArgument) naming "waveform" or the option at fault.
at::Tensor log_mel(const at::Tensor& waveform, const LogMelOptions& options = {});
// float32 [n_mels, n_fft / 2 + 1] on the CPU: the triangular filters log_mel applies.
at::Tensor mel_filters(const LogMelOptions& options = {});
// Frames of N samples: N / hop_length + 1.
int64_t frame_count(int64_t samples, const LogMelOptions& options = {});

// Log-mel frames -> Conv1d(n_mels, channels, 3) + GELU -> `layers` x [Conv1d(channels, channels,
// 3, stride 2) + GELU] -> LayerNorm(channels) -> Linear(channels, out_features): one latent per
// 2^layers frames (12.5 per second with the defaults).
struct AudioEncoderOptions {
  explicit AudioEncoderOptions(int64_t out_features) : out_features(out_features) {}
  int64_t out_features;  // the backbone's hidden size D
  LogMelOptions features;
  int64_t channels = 256;
  int64_t layers = 3;  // >= 0
};

class AudioEncoderImpl : public torch::nn::Cloneable<AudioEncoderImpl> {
 public:
  explicit AudioEncoderImpl(const AudioEncoderOptions& options);
  void reset() override;
  // features: floating [F,n_mels] or [B,F,n_mels], F >= 1 -> [L,D] or [B,L,D], L = latent_count(F),
  // in the module's dtype.
  at::Tensor forward(const at::Tensor& features);
  // waveform [N] or [B,N] -> latents: forward(log_mel(waveform, options.features)).
  at::Tensor encode(const at::Tensor& waveform);
  // Latents of F frames: F halved, rounded up, once per layer.
  int64_t latent_count(int64_t frames) const;
  // Throws Error(kInvalidArgument, "out_features") unless out_features == the backbone's hidden size.
  void check_fits(const ali::Backbone& backbone) const;

  AudioEncoderOptions options;
  torch::nn::Conv1d conv_in{nullptr};  // "conv_in.weight" [C,n_mels,3], "conv_in.bias" [C]
  torch::nn::ModuleList convs{nullptr};  // "convs.<i>.weight" [C,C,3], "convs.<i>.bias" [C]
  torch::nn::LayerNorm norm{nullptr};  // "norm.weight" [C], "norm.bias" [C]
  torch::nn::Linear proj{nullptr};     // "proj.weight" [D,C], "proj.bias" [D]
};
TORCH_MODULE(AudioEncoder);

}  // namespace aios::adapters
AIOS_EXPORT_END
