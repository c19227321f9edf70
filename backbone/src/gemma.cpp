// Gemma 2 and Gemma 3 text models: RMSNorm scaling by (1 + w) computed in float32, token
// embeddings scaled by sqrt(D) (ModelConfig::embedding_scale, applied by Model::embed), norms before
// and after both attention and MLP, GeGLU (tanh GELU), softmax scale query_pre_attn_scalar^-1/2,
// sliding-window and global layers (Gemma 3: each with its own rotary frequencies), Gemma 2's
// attention-logit soft-capping, Gemma 3's per-head q/k norms. Final-logit soft-capping is
// Model::classify's.
#include <tuple>

#include <fmt/format.h>

#include "architectures.h"
#include "layers.h"
#include "rotary.h"

namespace aios::backbone {

namespace {

struct GemmaLayer {
  at::Tensor input_norm, post_attention_norm, pre_mlp_norm, post_mlp_norm;  // [D] each, 1 + w, float32
  Linear qkv;                 // D -> (H+2Hkv)*hd
  Linear out;                 // H*hd -> D
  at::Tensor q_norm, k_norm;  // [hd] each, 1 + w, float32 (Gemma 3) or undefined
  Linear gate_up;             // D -> 2I: gate, then up
  Linear down;                // I -> D
  std::optional<int64_t> window;
};

class GemmaModel final : public ProjectingModel {
 public:
  GemmaModel(const ModelConfig& config, const WeightSource& w, const LoadOptions& options)
      : ProjectingModel(config, options),
        global_(config.rope, options.device),
        local_(config.local_rope.value_or(config.rope), options.device) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, hd = c.head_dim, H = c.num_heads, I = c.intermediate_size;
    auto take = [&](const std::string& name, at::IntArrayRef shape) { return w.take(name, shape, options); };
    auto norm = [&](const std::string& name, int64_t size) { return load_offset_norm(w, name, size, options); };
    auto matrix = [&](const std::string& name, at::IntArrayRef shape) { return w.take_matrix(name, shape, options); };
    if (options.tables) {
      load_tables(w, options);
      final_norm_ = norm("model.norm.weight", D);
    }
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = fmt::format("model.layers.{}.", i);
      GemmaLayer l;
      if (!loads_block(options, i)) {
        layers_.push_back(std::move(l));
        continue;
      }
      l.input_norm = norm(p + "input_layernorm.weight", D);
      l.post_attention_norm = norm(p + "post_attention_layernorm.weight", D);
      l.pre_mlp_norm = norm(p + "pre_feedforward_layernorm.weight", D);
      l.post_mlp_norm = norm(p + "post_feedforward_layernorm.weight", D);
      auto [qkv_weight, qkv_bias] = load_qkv(w, p, c, options);
      l.qkv = project(qkv_weight, qkv_bias);
      l.out = project(matrix(p + "self_attn.o_proj.weight", {D, H * hd}),
                      c.out_bias ? take(p + "self_attn.o_proj.bias", {D}) : at::Tensor());
      if (c.qk_norm == QkNorm::kPerHead) {
        l.q_norm = norm(p + "self_attn.q_norm.weight", hd);
        l.k_norm = norm(p + "self_attn.k_norm.weight", hd);
      }
      l.gate_up = project(Matrix::stack({matrix(p + "mlp.gate_proj.weight", {I, D}), matrix(p + "mlp.up_proj.weight", {I, D})}));
      l.down = project(matrix(p + "mlp.down_proj.weight", {D, I}));
      if (!c.sliding_windows.empty()) l.window = c.sliding_windows[static_cast<std::size_t>(i)];
      layers_.push_back(std::move(l));
    }
  }

  struct Context final : AttentionContext {
    using AttentionContext::AttentionContext;
    at::Tensor cos, sin;              // [B,1,T,rotary_dim]: global layers
    at::Tensor local_cos, local_sin;  // the same for sliding-window layers
  };

  std::unique_ptr<BlockContext> begin(const at::Tensor& latents, const Attention& attention,
                                      KVCache* cache) const override {
    auto context = std::make_unique<Context>(attention, latents.size(1), config_.sliding_windows, cache);
    std::tie(context->cos, context->sin) = global_.tables(attention.positions, dtype_);
    std::tie(context->local_cos, context->local_sin) = local_.tables(attention.positions, dtype_);
    return context;
  }

  at::Tensor input(const at::Tensor& latents, const BlockContext&) const override { return latents; }

  at::Tensor block(int64_t index, const at::Tensor& x, const BlockContext& base) const override {
    const auto& ctx = static_cast<const Context&>(base);
    const ModelConfig& c = config_;
    const int64_t B = x.size(0), T = x.size(1), H = c.num_heads, K = c.num_kv_heads, hd = c.head_dim;
    const GemmaLayer& l = layers_[static_cast<std::size_t>(index)];
    at::Tensor h = offset_rms_norm(x, l.input_norm, c.norm_eps);
    auto parts = l.qkv(h).split_with_sizes({H * hd, K * hd, K * hd}, -1);
    at::Tensor q = parts[0].view({B, T, H, hd}), k = parts[1].view({B, T, K, hd});
    if (l.q_norm.defined()) {
      q = offset_rms_norm(q, l.q_norm, c.norm_eps);
      k = offset_rms_norm(k, l.k_norm, c.norm_eps);
    }
    q = q.transpose(1, 2);  // [B,H,T,hd]
    k = k.transpose(1, 2);  // [B,K,T,hd]
    at::Tensor v = parts[2].view({B, T, K, hd}).transpose(1, 2);
    const bool sliding = l.window.has_value();
    const Rotary& rotary = sliding ? local_ : global_;
    const at::Tensor& cos = sliding ? ctx.local_cos : ctx.cos;
    const at::Tensor& sin = sliding ? ctx.local_sin : ctx.sin;
    q = rotary.apply(q, cos, sin);
    k = rotary.apply(k, cos, sin);
    std::tie(k, v) = ctx.keys_values(index, k, v);
    at::Tensor attn = attend(q, k, v, ctx.mask(l.window), c.attention_scale, c.attn_logit_softcap);  // [B,T,H*hd]
    at::Tensor out = x + offset_rms_norm(l.out(attn), l.post_attention_norm, c.norm_eps);
    h = offset_rms_norm(out, l.pre_mlp_norm, c.norm_eps);
    auto gate_up = l.gate_up(h).chunk(2, -1);  // 2 × [B,T,I]
    at::Tensor m = l.down(activate(gate_up[0], c.activation) * gate_up[1]);
    return out + offset_rms_norm(m, l.post_mlp_norm, c.norm_eps);
  }

  at::Tensor final_norm(const at::Tensor& x) const override { return offset_rms_norm(x, final_norm_, config_.norm_eps); }

 private:
  std::vector<GemmaLayer> layers_;
  at::Tensor final_norm_;  // [D], 1 + w, float32
  Rotary global_, local_;
};

}  // namespace

std::unique_ptr<Model> make_gemma(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options) {
  return std::make_unique<GemmaModel>(config, weights, options);
}

}  // namespace aios::backbone
