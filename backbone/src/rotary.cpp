#include "rotary.h"

#include <algorithm>
#include <cmath>

namespace aios::backbone {

namespace {

const auto kF32 = at::TensorOptions().dtype(at::kFloat);

// base^(2i/dim) for i < dim/2, float32 as the reference computes it.
at::Tensor wavelength_powers(double base, int64_t dim) {
  const at::Tensor exponent = at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                              static_cast<double>(dim);
  return at::pow(at::scalar_tensor(base, kF32), exponent);
}

at::Tensor divided(const at::Tensor& powers, const std::vector<double>& factors) {
  if (factors.empty()) return 1.0 / powers;
  const at::Tensor f = at::tensor(std::vector<double>(factors), at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
  return 1.0 / (f * powers);
}

at::Tensor llama3(at::Tensor inv_freq, const RopeConfig& r) {
  const double old_len = static_cast<double>(r.original_max_positions);
  const double low_freq_wavelen = old_len / r.low_freq_factor;
  const double high_freq_wavelen = old_len / r.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq);
  at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  at::Tensor medium = (wavelen < high_freq_wavelen).logical_not().logical_and((wavelen > low_freq_wavelen).logical_not());
  return at::where(medium, smoothed, scaled);
}

at::Tensor yarn(const RopeConfig& r) {
  const int64_t dim = r.rotary_dim;
  const at::Tensor powers = at::pow(at::scalar_tensor(r.theta, kF32), at::arange(0, dim, 2, kF32) / static_cast<double>(dim));
  const at::Tensor extrapolated = 1.0 / powers;
  const at::Tensor interpolated = 1.0 / (r.factor * powers);
  // The dimensions whose wavelengths complete between beta_slow and beta_fast rotations over the
  // pretraining length are blended; shorter ones keep their frequency, longer ones are interpolated.
  auto correction_dim = [&](double rotations) {
    return static_cast<double>(dim) * std::log(static_cast<double>(r.original_max_positions) / (rotations * 2 * M_PI)) /
           (2 * std::log(r.theta));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const at::Tensor ramp = ((at::arange(dim / 2, kF32) - low) / (high - low)).clamp(0, 1);
  const at::Tensor extrapolation = 1 - ramp;
  return interpolated * (1 - extrapolation) + extrapolated * extrapolation;
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.slice(-1, half).neg(), x.slice(-1, 0, half)}, -1);
}

}  // namespace

Rotary::Rotary(const RopeConfig& rope, c10::Device device) : rope_(rope) {
  const RopeConfig& r = rope_;
  switch (r.type) {
    case RopeConfig::Type::kDefault:
    case RopeConfig::Type::kDynamic:  // its tables start from the default ones (dynamic_frequencies)
    case RopeConfig::Type::kLongrope:
      inv_freq_ = divided(wavelength_powers(r.theta, r.rotary_dim), r.short_factors);
      break;
    case RopeConfig::Type::kLinear: inv_freq_ = divided(wavelength_powers(r.theta, r.rotary_dim), {}) / r.factor; break;
    case RopeConfig::Type::kLlama3: inv_freq_ = llama3(divided(wavelength_powers(r.theta, r.rotary_dim), {}), r); break;
    case RopeConfig::Type::kYarn: inv_freq_ = yarn(r); break;
  }
  inv_freq_ = inv_freq_.to(device);
  if (r.type == RopeConfig::Type::kLongrope) {
    long_inv_freq_ = divided(wavelength_powers(r.theta, r.rotary_dim), r.long_factors).to(device);
  }
}

at::Tensor Rotary::dynamic_frequencies(int64_t length) const {
  // NTK: the base grows with the length past the original one; float32 as the reference computes it.
  const RopeConfig& r = rope_;
  const double dim = static_cast<double>(r.rotary_dim);
  const at::Tensor len = at::scalar_tensor(static_cast<double>(length), kF32);
  const at::Tensor base = r.theta * (r.factor * len / static_cast<double>(r.original_max_positions) - (r.factor - 1))
                                        .pow(dim / (dim - 2));
  const at::Tensor exponent = at::arange(0, r.rotary_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / dim;
  return (1.0 / base.pow(exponent)).to(inv_freq_.device());
}

std::pair<at::Tensor, at::Tensor> Rotary::tables(const at::Tensor& positions, at::ScalarType dtype) const {
  at::Tensor inv_freq = inv_freq_;
  if (rope_.type == RopeConfig::Type::kDynamic || rope_.type == RopeConfig::Type::kLongrope) {
    const int64_t length = positions.numel() == 0 ? 0 : positions.max().item<int64_t>() + 1;
    if (length > rope_.original_max_positions) {
      inv_freq = rope_.type == RopeConfig::Type::kLongrope ? long_inv_freq_ : dynamic_frequencies(length);
    }
  }
  const at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B,T,rotary_dim/2]
  const at::Tensor angles = at::cat({freqs, freqs}, -1).unsqueeze(1);         // [B,1,T,rotary_dim]
  at::Tensor cos = angles.cos(), sin = angles.sin();
  if (rope_.attention_factor != 1.0) {
    cos = cos * rope_.attention_factor;
    sin = sin * rope_.attention_factor;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor Rotary::apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  if (rope_.rotary_dim == x.size(-1)) return x * cos + rotate_half(x) * sin;
  const at::Tensor rotated = x.narrow(-1, 0, rope_.rotary_dim);
  return at::cat({rotated * cos + rotate_half(rotated) * sin, x.narrow(-1, rope_.rotary_dim, x.size(-1) - rope_.rotary_dim)}, -1);
}

}  // namespace aios::backbone
