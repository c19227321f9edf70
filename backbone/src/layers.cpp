#include "layers.h"

namespace aios::backbone {

at::Tensor attention_mask(const Attention& attention, int64_t seq_len, std::optional<int64_t> window) {
  const bool windowed = window.has_value() && *window < seq_len;
  if (!attention.full_mask.defined() && !attention.key_padding.defined() && !windowed) return {};
  const auto device = attention.positions.device();
  at::Tensor mask;  // [B or 1, T, T]
  if (attention.full_mask.defined()) {
    mask = attention.full_mask;
  } else {
    const at::Tensor index = at::arange(seq_len, at::TensorOptions().dtype(at::kLong).device(device));
    const at::Tensor distance = index.unsqueeze(1) - index.unsqueeze(0);  // query - key, [T,T]
    mask = distance.ge(0);
    if (windowed) mask = mask.logical_and(distance.lt(*window));
    mask = mask.unsqueeze(0);
    if (attention.key_padding.defined()) mask = mask.logical_and(attention.key_padding.unsqueeze(1));
  }
  const at::Tensor empty_rows = mask.any(-1, /*keepdim=*/true).logical_not();  // [B,T,1]
  const at::Tensor eye = at::eye(seq_len, at::TensorOptions().dtype(at::kBool).device(device));
  mask = mask.logical_or(empty_rows.logical_and(eye));
  return mask.unsqueeze(1);
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                  double scale) {
  const bool gqa = q.size(1) != k.size(1);
  at::Tensor out;
  if (mask.defined()) {
    out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, /*is_causal=*/false, scale, gqa);
  } else {
    out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale, gqa);
  }
  // [B,H,T,hd] -> [B,T,H*hd]
  return out.transpose(1, 2).reshape({q.size(0), q.size(2), q.size(1) * q.size(3)});
}

at::Tensor activate(const at::Tensor& x, Activation activation) {
  switch (activation) {
    case Activation::kSilu: return at::silu(x);
    case Activation::kGeluExact: return at::gelu(x);
    case Activation::kGeluTanh: return at::gelu(x, "tanh");
  }
  return x;
}

AttentionContext::AttentionContext(const Attention& a, int64_t seq_len,
                                   const std::vector<std::optional<int64_t>>& windows)
    : attention(a) {
  auto add = [&](std::optional<int64_t> window) {
    for (const auto& entry : masks_) {
      if (entry.first == window) return;
    }
    masks_.emplace_back(window, attention_mask(attention, seq_len, window));
  };
  if (windows.empty()) add(std::nullopt);
  for (const auto& window : windows) add(window);
}

const at::Tensor& AttentionContext::mask(std::optional<int64_t> window) const {
  for (const auto& [w, m] : masks_) {
    if (w == window) return m;
  }
  return masks_.front().second;  // unreachable: every layer's window was added up front
}

}  // namespace aios::backbone
