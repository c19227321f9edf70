// Internal: a mixture-of-experts MLP, routed (each token runs only the experts it is sent to).
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "aios/backbone/config.h"
#include "layers.h"

namespace aios::backbone {

struct Experts {
  at::Tensor router;          // [E,D]
  at::Tensor router_bias;     // [E] or undefined
  std::vector<Linear> gate_up;  // E of D -> 2I: each expert's gate rows, then its up rows (expanded or stored)
  std::vector<Linear> down;     // E of I -> D
  int64_t top_k = 1;
  bool normalize = false;      // the k weights renormalised to sum to 1
  bool softmax_top_k = false;  // softmax over the k chosen logits only (MoeConfig::softmax_top_k)
  Activation activation = Activation::kSilu;
  double swiglu_limit = 0.0, swiglu_alpha = 0.0;  // MoeConfig's clamped SwiGLU; limit 0 = none
};

// h [B,T,D] -> [B,T,D]: softmax over the router's logits (in float32 at least), the top k experts of each
// token weighted by their probabilities (or by a softmax over the top k logits), as transformers
// computes it. Tokens are grouped by expert, so the cost grows with k, not with E; experts are
// summed in ascending order, as the reference does. Differentiable in h (through the experts' outputs and the routing weights).
// With `choices`, stores which experts each token used: int64 [B,T,k], by decreasing weight.
at::Tensor route(const Experts& experts, const at::Tensor& h, at::Tensor* choices = nullptr);

// A block's MLP: gated and dense, or a mixture of experts with, beside it, an optional shared MLP
// weighted per token by sigmoid(shared_gate(h)) (Qwen2-MoE, Qwen3-Next). ProjectingModel::load_mlp
// and load_experts build it.
struct FeedForward {
  Linear gate_up;  // D -> 2I: gate, then up (the dense MLP or the shared expert); undefined without either
  Linear down;     // I -> D
  std::optional<Experts> experts;
  std::optional<Linear> shared_gate;  // D -> 1
  // h [B,T,D] -> [B,T,D]. With `choices`, the experts each position ran (route()).
  at::Tensor operator()(const at::Tensor& h, Activation activation, at::Tensor* choices = nullptr) const;
};

}  // namespace aios::backbone
