#include "experts.h"

#include <tuple>


namespace aios::backbone {

namespace {

// The expert's gated activation of its gate and up halves, [n,I] each.
at::Tensor glu(const Experts& e, const at::Tensor& gate, const at::Tensor& up) {
  if (e.swiglu_limit <= 0) return activate(gate, e.activation) * up;
  const at::Tensor g = gate.clamp_max(e.swiglu_limit);
  return (up.clamp(-e.swiglu_limit, e.swiglu_limit) + 1) * (g * at::sigmoid(g * e.swiglu_alpha));
}

}  // namespace

at::Tensor route(const Experts& e, const at::Tensor& h, at::Tensor* choices) {
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2), E = e.router.size(0), k = e.top_k;
  const at::Tensor x = h.reshape({B * T, D});
  // In float32 at least, as the reference; a float64 model keeps its precision.
  const at::ScalarType precise = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor logits = at::linear(x, e.router, e.router_bias);  // [N,E]
  at::Tensor weights, chosen;                                         // [N,k] each
  if (e.softmax_top_k) {
    std::tie(weights, chosen) = logits.topk(k, -1);
    weights = at::softmax(weights, -1, precise);
  } else {
    std::tie(weights, chosen) = at::softmax(logits, -1, precise).topk(k, -1);
    if (e.normalize) weights = weights / weights.sum(-1, /*keepdim=*/true);
  }
  weights = weights.to(x.scalar_type()).reshape(-1);  // [N*k], slot s = token * k + rank
  if (choices != nullptr) *choices = chosen.reshape({B, T, k});

  // Slots sorted by expert; each expert then runs once, on its own tokens.
  const at::Tensor flat = chosen.reshape(-1);
  const at::Tensor order = flat.argsort(/*stable=*/true);
  const at::Tensor counts = at::bincount(flat, {}, E).cpu();
  const auto count = counts.accessor<int64_t, 1>();
  at::Tensor out = at::zeros_like(x);
  int64_t begin = 0;
  for (int64_t expert = 0; expert < E; ++expert) {
    if (count[expert] == 0) continue;
    const at::Tensor slots = order.narrow(0, begin, count[expert]);
    begin += count[expert];
    const at::Tensor tokens = at::floor_divide(slots, k);
    const auto gate_up = e.gate_up[static_cast<std::size_t>(expert)](x.index_select(0, tokens)).chunk(2, -1);
    const at::Tensor y = e.down[static_cast<std::size_t>(expert)](glu(e, gate_up[0], gate_up[1]));
    // In place: a copy of the whole [N,D] output per expert would make the cost grow with E.
    out.index_add_(0, tokens, y * weights.index_select(0, slots).unsqueeze(1));
  }
  return out.view({B, T, D});
}

}  // namespace aios::backbone
