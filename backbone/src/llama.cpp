// The Llama block family: Llama 2/3, SmolLM2, Qwen2 (qkv bias), Qwen3 (q/k norm per head), Mistral
// (sliding window), SmolLM3 (layers without rotary), OLMo 2 (q/k norm over the projection, norms on
// the attention and MLP outputs), Phi-3 (packed projections, partial rotary, LongRoPE), and with
// experts (experts.h) Mixtral, Qwen2-MoE, Qwen3-MoE and gpt-oss (attention sinks, biased experts).
//
// Load-time fusion: q, k, v projections are concatenated into one [(H+2Hkv)*hd, D] matrix and gate
// and up into one [2I, D] matrix, so each block runs four matrix products instead of seven.
#include <cmath>
#include <tuple>

#include <fmt/format.h>

#include "architectures.h"
#include "experts.h"
#include "layers.h"
#include "rotary.h"

namespace aios::backbone {

namespace {

struct LlamaLayer {
  // [D] each: the attention and MLP inputs' norms, or with ModelConfig::norm_outputs their outputs'.
  at::Tensor attn_norm;
  Linear qkv;             // D -> (H+2Hkv)*hd, with or without biases
  Linear out;             // H*hd -> D
  at::Tensor q_norm;      // [hd] per head, [H*hd] whole, or undefined (ModelConfig::qk_norm)
  at::Tensor k_norm;      // [hd] per head, [Hkv*hd] whole, or undefined
  at::Tensor sinks;       // [H] or undefined (ModelConfig::attention_sinks)
  at::Tensor mlp_norm;
  Linear gate_up;  // D -> 2I: gate, then up
  Linear down;     // I -> D
  // A mixture-of-experts layer's experts; the dense fields above then hold its shared expert, if
  // any (D -> 2S, S -> D), gated per token by shared_gate (D -> 1).
  std::optional<Experts> experts;
  std::optional<Linear> shared_gate;
  std::optional<int64_t> window;
  bool rope = true;
};

// In reduced precision the reference normalises in float32, then scales in the model dtype (Llama)
// or, with `scale_in_float32` (OLMo 2, gpt-oss), scales in float32 and casts the product.
at::Tensor llama_norm(const at::Tensor& x, const at::Tensor& weight, double eps, bool scale_in_float32) {
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) return rms_norm(x, weight, eps);
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (scale_in_float32) return (weight * normed).to(x.scalar_type());
  return weight * normed.to(x.scalar_type());
}

class LlamaModel final : public ProjectingModel {
 public:
  LlamaModel(const ModelConfig& config, const WeightSource& w, const LoadOptions& options)
      : ProjectingModel(config, options), rotary_(config.rope, options.device) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, hd = c.head_dim, H = c.num_heads, K = c.num_kv_heads, I = c.intermediate_size;
    auto take = [&](const std::string& name, at::IntArrayRef shape) { return w.take(name, shape, options); };
    auto matrix = [&](const std::string& name, at::IntArrayRef shape) { return w.take_matrix(name, shape, options); };
    if (options.tables) {
      load_tables(matrix("model.embed_tokens.weight", {c.vocab_size, D}),
                  c.tie_word_embeddings ? std::nullopt : std::optional(matrix("lm_head.weight", {c.vocab_size, D})));
      final_norm_ = own(take("model.norm.weight", {D}));
    }
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = fmt::format("model.layers.{}.", i);
      LlamaLayer l;
      if (!loads_block(options, i)) {
        layers_.push_back(std::move(l));
        continue;
      }
      if (c.norm_outputs) {
        l.attn_norm = own(take(p + "post_attention_layernorm.weight", {D}));
        l.mlp_norm = own(take(p + "post_feedforward_layernorm.weight", {D}));
      } else {
        l.attn_norm = own(take(p + "input_layernorm.weight", {D}));
        l.mlp_norm = own(take(p + "post_attention_layernorm.weight", {D}));
      }
      auto [qkv_weight, qkv_bias] = load_qkv(w, p, c, options);
      l.qkv = project(qkv_weight, qkv_bias);
      l.out = project(matrix(p + "self_attn.o_proj.weight", {D, H * hd}),
                      c.out_bias ? take(p + "self_attn.o_proj.bias", {D}) : at::Tensor());
      if (c.qk_norm != QkNorm::kNone) {
        const bool whole = c.qk_norm == QkNorm::kWhole;
        l.q_norm = own(take(p + "self_attn.q_norm.weight", {whole ? H * hd : hd}));
        l.k_norm = own(take(p + "self_attn.k_norm.weight", {whole ? K * hd : hd}));
      }
      if (c.attention_sinks) l.sinks = own(take(p + "self_attn.sinks", {H}));
      if (!c.moe.layers.empty() && c.moe.layers[static_cast<std::size_t>(i)]) {
        load_experts(w, p, options, l);
      } else {
        load_mlp(w, p + "mlp.", I, options, l);
      }
      if (!c.sliding_windows.empty()) l.window = c.sliding_windows[static_cast<std::size_t>(i)];
      if (!c.rope_layers.empty()) l.rope = c.rope_layers[static_cast<std::size_t>(i)];
      layers_.push_back(std::move(l));
    }
  }

  // A gated MLP of width I named "<prefix>gate_proj" ... ("<prefix>gate_up_proj" when packed).
  void load_mlp(const WeightSource& w, const std::string& prefix, int64_t I, const LoadOptions& options, LlamaLayer& l) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size;
    auto take = [&](const std::string& name, at::IntArrayRef shape) { return w.take(prefix + name, shape, options); };
    auto matrix = [&](const std::string& name, at::IntArrayRef shape) { return w.take_matrix(prefix + name, shape, options); };
    const Matrix gate_up = c.packed_projections
        ? matrix("gate_up_proj.weight", {2 * I, D})
        : Matrix::stack({matrix("gate_proj.weight", {I, D}), matrix("up_proj.weight", {I, D})});
    l.gate_up = project(gate_up, c.mlp_bias ? at::cat({take("gate_proj.bias", {I}), take("up_proj.bias", {I})}) : at::Tensor());
    l.down = project(matrix("down_proj.weight", {D, I}), c.mlp_bias ? take("down_proj.bias", {D}) : at::Tensor());
  }

  // The router and experts of layer prefix `p`, stacked [E,...] as a GGUF file stores them or one
  // expert at a time as a Hugging Face folder does (gpt-oss: stacked, transposed, gate and up
  // interleaved); Qwen2-MoE's shared expert and its gate.
  void load_experts(const WeightSource& w, const std::string& p, const LoadOptions& options, LlamaLayer& l) {
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
    Experts& x = l.experts.emplace();
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
      load_mlp(w, block + "shared_expert.", m.shared_expert_size, options, l);
      l.shared_gate = project(take(block + "shared_expert_gate.weight", {1, D}));
    }
  }

  struct Context final : AttentionContext {
    using AttentionContext::AttentionContext;
    at::Tensor cos, sin;  // [B,1,T,rotary_dim] rotary tables in the model dtype
  };

  std::unique_ptr<BlockContext> begin(const at::Tensor& latents, const Attention& attention,
                                      KVCache* cache) const override {
    auto context = std::make_unique<Context>(attention, latents.size(1), config_.sliding_windows, cache);
    std::tie(context->cos, context->sin) = rotary_.tables(attention.positions, dtype_);
    return context;
  }

  at::Tensor input(const at::Tensor& latents, const BlockContext&) const override { return latents; }

  at::Tensor block(int64_t index, const at::Tensor& x, const BlockContext& base) const override {
    const auto& ctx = static_cast<const Context&>(base);
    const ModelConfig& c = config_;
    const int64_t B = x.size(0), T = x.size(1), H = c.num_heads, K = c.num_kv_heads, hd = c.head_dim;
    const LlamaLayer& l = layers_[static_cast<std::size_t>(index)];
    auto norm = [&](const at::Tensor& t, const at::Tensor& weight) { return llama_norm(t, weight, c.norm_eps, c.norm_scale_float32); };
    at::Tensor h = c.norm_outputs ? x : norm(x, l.attn_norm);
    at::Tensor qkv = l.qkv(h);  // [B,T,(H+2K)*hd]
    auto parts = qkv.split_with_sizes({H * hd, K * hd, K * hd}, -1);
    at::Tensor q = parts[0], k = parts[1];
    if (c.qk_norm == QkNorm::kWhole) {
      q = norm(q, l.q_norm);
      k = norm(k, l.k_norm);
    }
    q = q.view({B, T, H, hd});
    k = k.view({B, T, K, hd});
    if (c.qk_norm == QkNorm::kPerHead) {
      q = norm(q, l.q_norm);
      k = norm(k, l.k_norm);
    }
    q = q.transpose(1, 2);  // [B,H,T,hd]
    k = k.transpose(1, 2);  // [B,K,T,hd]
    at::Tensor v = parts[2].view({B, T, K, hd}).transpose(1, 2);
    if (l.rope) {
      q = rotary_.apply(q, ctx.cos, ctx.sin);
      k = rotary_.apply(k, ctx.cos, ctx.sin);
    }
    std::tie(k, v) = ctx.keys_values(index, k, v);  // with a cache: [B,K,S,hd], every cached slot
    at::Tensor attn = attend(q, k, v, ctx.mask(l.window), c.attention_scale, 0.0, l.sinks);  // [B,T,H*hd]
    at::Tensor a = l.out(attn);
    at::Tensor out = x + (c.norm_outputs ? norm(a, l.attn_norm) : a);
    h = c.norm_outputs ? out : norm(out, l.mlp_norm);
    at::Tensor m = l.experts ? route(*l.experts, h, ctx.routing != nullptr ? &(*ctx.routing)[index] : nullptr) : at::Tensor();
    if (l.gate_up.defined()) {  // the dense MLP, or the shared expert beside the experts
      auto gate_up = l.gate_up(h).chunk(2, -1);  // 2 × [B,T,I]
      at::Tensor dense = l.down(activate(gate_up[0], c.activation) * gate_up[1]);
      if (l.shared_gate) dense = at::sigmoid((*l.shared_gate)(h)) * dense;
      m = m.defined() ? m + dense : dense;
    }
    return out + (c.norm_outputs ? norm(m, l.mlp_norm) : m);
  }

  at::Tensor final_norm(const at::Tensor& x) const override {
    return llama_norm(x, final_norm_, config_.norm_eps, config_.norm_scale_float32);
  }

 private:
  std::vector<LlamaLayer> layers_;
  at::Tensor final_norm_;  // [D]
  Rotary rotary_;
};

}  // namespace

std::unique_ptr<Model> make_llama(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options) {
  return std::make_unique<LlamaModel>(config, weights, options);
}

}  // namespace aios::backbone
