// Internal: rotary position embedding, for every rope type of RopeConfig.
#pragma once

#include <utility>

#include <ATen/ATen.h>

#include "aios/backbone/config.h"

namespace aios::backbone {

// Computes the frequencies as transformers' rope functions do (modeling_rope_utils.py), in float32.
// Types that depend on the length of a pass (dynamic, longrope) take it from the pass's largest
// position, as transformers does from position_ids, but without its memory of earlier passes: the
// same positions always give the same tables.
class Rotary {
 public:
  Rotary(const RopeConfig& rope, c10::Device device);

  // cos and sin [B,1,T,rotary_dim] in `dtype`, for positions [B,T] (int64), attention factor applied.
  std::pair<at::Tensor, at::Tensor> tables(const at::Tensor& positions, at::ScalarType dtype) const;

  // x [B,heads,T,hd] with its first rotary_dim channels rotated by the tables; the rest unchanged.
  at::Tensor apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

 private:
  at::Tensor dynamic_frequencies(int64_t length) const;

  RopeConfig rope_;
  at::Tensor inv_freq_;       // [rotary_dim/2] float32
  at::Tensor long_inv_freq_;  // longrope: for passes reaching past original_max_positions
};

}  // namespace aios::backbone
