#include "experts.h"

#include <tuple>

#include <fmt/format.h>

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

at::Tensor FeedForward::operator()(const at::Tensor& h, Activation activation, at::Tensor* choices) const {
  at::Tensor m = experts ? route(*experts, h, choices) : at::Tensor();
  if (gate_up.defined()) {  // the dense MLP, or the shared expert beside the experts
    auto halves = gate_up(h).chunk(2, -1);  // 2 × [B,T,I]
    at::Tensor dense = down(activate(halves[0], activation) * halves[1]);
    if (shared_gate) dense = at::sigmoid((*shared_gate)(h)) * dense;
    m = m.defined() ? m + dense : dense;
  }
  return m;
}

FeedForward ProjectingModel::load_mlp(const WeightSource& w, const std::string& prefix, int64_t I,
                                      const LoadOptions& options) {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size;
  auto take = [&](const std::string& name, at::IntArrayRef shape) { return w.take(prefix + name, shape, options); };
  auto matrix = [&](const std::string& name, at::IntArrayRef shape) { return w.take_matrix(prefix + name, shape, options); };
  const Matrix gate_up = c.packed_projections
      ? matrix("gate_up_proj.weight", {2 * I, D})
      : Matrix::stack({matrix("gate_proj.weight", {I, D}), matrix("up_proj.weight", {I, D})});
  FeedForward f;
  f.gate_up = project(gate_up, c.mlp_bias ? at::cat({take("gate_proj.bias", {I}), take("up_proj.bias", {I})}) : at::Tensor());
  f.down = project(matrix("down_proj.weight", {D, I}), c.mlp_bias ? take("down_proj.bias", {D}) : at::Tensor());
  return f;
}

FeedForward ProjectingModel::load_experts(const WeightSource& w, const std::string& p, const LoadOptions& options) {
  const ModelConfig& c = config_;
  const MoeConfig& m = c.moe;
  const int64_t D = c.hidden_size, E = m.num_experts, I = m.expert_size;
  const bool mixtral = m.layout == MoeConfig::Layout::kMixtral, gpt_oss = m.layout == MoeConfig::Layout::kGptOss;
  const std::string block = p + (mixtral ? "block_sparse_moe." : "mlp.");
  const char* gate = mixtral ? "w1" : "gate_proj";
  const char* up = mixtral ? "w3" : "up_proj";
  const char* down_name = mixtral ? "w2" : "down_proj";
  auto take = [&](const std::string& name, at::IntArrayRef shape) { return w.take(name, shape, options); };
  // "<block>experts.<name>.<kind>": all experts in one tensor; "<block>experts.<e>.<name>.<kind>": one.
  auto stacked = [&](const char* name, at::IntArrayRef shape, const char* kind = "weight") {
    const std::string all = fmt::format("{}experts.{}.{}", block, name, kind);
    std::vector<int64_t> full = {E};
    full.insert(full.end(), shape.begin(), shape.end());
    if (w.contains(all)) return take(all, full);
    std::vector<at::Tensor> each;
    for (int64_t e = 0; e < E; ++e) each.push_back(take(fmt::format("{}experts.{}.{}.{}", block, e, name, kind), shape));
    return at::stack(each);
  };
  // The same for weight matrices, each expert's kept as options.weights asks.
  auto matrices = [&](const char* name, int64_t rows, int64_t cols) {
    const std::string all = fmt::format("{}experts.{}.weight", block, name);
    if (w.contains(all)) return w.take_matrices(all, {E, rows, cols}, options);
    std::vector<Matrix> each;
    for (int64_t e = 0; e < E; ++e) each.push_back(w.take_matrix(fmt::format("{}experts.{}.{}.weight", block, e, name), {rows, cols}, options));
    return each;
  };
  FeedForward f;
  Experts& x = f.experts.emplace();
  x.router = own(take(block + (gpt_oss ? "router.weight" : "gate.weight"), {E, D}));
  std::vector<Matrix> gate_up, down;  // E of [2I,D] and [D,I]
  at::Tensor gate_up_bias, down_bias;  // [E,2I], [E,D] or undefined
  if (gpt_oss && w.contains(block + "experts.gate_up_proj")) {
    // [E,D,2I] with gate and up channels alternating -> [E,2I,D] gate rows, then up rows.
    auto halves = [](const at::Tensor& t) { return at::cat({t.slice(1, 0, {}, 2), t.slice(1, 1, {}, 2)}, 1); };
    const at::Tensor all_gate_up = halves(w.take(block + "experts.gate_up_proj", {E, D, 2 * I}, taking(options)).transpose(1, 2));
    const at::Tensor all_down = w.take(block + "experts.down_proj", {E, I, D}, taking(options)).transpose(1, 2);  // [E,D,I]
    for (int64_t e = 0; e < E; ++e) {
      const std::string name = fmt::format("{}experts[{}]", block, e);
      gate_up.push_back(kept(all_gate_up[e], options, name));
      down.push_back(kept(all_down[e], options, name));
    }
    gate_up_bias = halves(take(block + "experts.gate_up_proj_bias", {E, 2 * I}));
    down_bias = take(block + "experts.down_proj_bias", {E, D});
  } else if (w.contains(block + "experts.gate_up_proj")) {
    // transformers' fused form, as Qwen3.5-MoE checkpoints store it: [E,2I,D] gate rows, then up rows; [E,D,I].
    gate_up = w.take_matrices(block + "experts.gate_up_proj", {E, 2 * I, D}, options);
    down = w.take_matrices(block + "experts.down_proj", {E, D, I}, options);
  } else {
    const std::vector<Matrix> gates = matrices(gate, I, D), ups = matrices(up, I, D);
    for (int64_t e = 0; e < E; ++e) gate_up.push_back(Matrix::stack({gates[e], ups[e]}));
    down = matrices(down_name, D, I);
    if (gpt_oss) {
      gate_up_bias = at::cat({stacked(gate, {I}, "bias"), stacked(up, {I}, "bias")}, 1);  // [E,2I]
      down_bias = stacked(down_name, {D}, "bias");
    }
  }
  for (int64_t e = 0; e < E; ++e) {
    x.gate_up.push_back(project(gate_up[e], gate_up_bias.defined() ? gate_up_bias[e].contiguous() : at::Tensor()));
    x.down.push_back(project(down[e], down_bias.defined() ? down_bias[e].contiguous() : at::Tensor()));
  }
  if (gpt_oss) x.router_bias = own(take(block + "router.bias", {E}));
  x.top_k = m.top_k;
  x.normalize = m.normalize_top_k;
  x.softmax_top_k = m.softmax_top_k;
  x.swiglu_limit = m.swiglu_limit;
  x.swiglu_alpha = m.swiglu_alpha;
  x.activation = c.activation;
  if (m.shared_expert_size > 0) {
    FeedForward shared = load_mlp(w, block + "shared_expert.", m.shared_expert_size, options);
    f.gate_up = std::move(shared.gate_up);
    f.down = std::move(shared.down);
    f.shared_gate = project(take(block + "shared_expert_gate.weight", {1, D}));
  }
  return f;
}

}  // namespace aios::backbone
