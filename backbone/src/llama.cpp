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
  FeedForward mlp;
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
      load_tables(w, options);
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
      l.mlp = !c.moe.layers.empty() && c.moe.layers[static_cast<std::size_t>(i)] ? load_experts(w, p, options)
                                                                                : load_mlp(w, p + "mlp.", I, options);
      if (!c.sliding_windows.empty()) l.window = c.sliding_windows[static_cast<std::size_t>(i)];
      if (!c.rope_layers.empty()) l.rope = c.rope_layers[static_cast<std::size_t>(i)];
      layers_.push_back(std::move(l));
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
    const at::Tensor m = l.mlp(h, c.activation, ctx.routing != nullptr ? &(*ctx.routing)[index] : nullptr);
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
