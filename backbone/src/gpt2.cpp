// GPT-2: pre-LayerNorm blocks, learned absolute positions, fused qkv projection, GELU MLP.
//
// Checkpoints store projections as Conv1D weights [in, out]; Linear keeps or transposes them once
// at load time.
#include <fmt/format.h>

#include "architectures.h"
#include "layers.h"

namespace aios::backbone {

namespace {

struct Gpt2Layer {
  at::Tensor ln1_weight, ln1_bias;    // [D]
  Linear qkv;                         // D -> 3D
  Linear out;                         // D -> D
  at::Tensor ln2_weight, ln2_bias;    // [D]
  Linear fc;                          // D -> I
  Linear proj;                        // I -> D
  double scale = 1.0;
};

class Gpt2Model final : public ProjectingModel {
 public:
  Gpt2Model(const ModelConfig& config, const WeightSource& w, const LoadOptions& options)
      : ProjectingModel(config, options) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, I = c.intermediate_size;
    // save_pretrained writes "transformer."; original checkpoints have no prefix.
    const std::string prefix = w.contains("transformer.wte.weight") ? "transformer." : "";
    auto take = [&](const std::string& name, at::IntArrayRef shape) { return w.take(prefix + name, shape, options); };
    auto conv1d = [&](const std::string& name, int64_t in, int64_t out) {
      const at::Tensor bias = take(name + ".bias", {out});
      if (!quantizes(options)) return project(take(name + ".weight", {in, out}), bias, /*in_out=*/true);
      // Conv1D stores [in,out]: quantised along the rows of its [out,in] transpose, as the other families'.
      return project(kept(w.take(prefix + name + ".weight", {in, out}, taking(options)).t(), options, name), bias);
    };
    if (options.tables) {
      load_tables(w.take_matrix(prefix + "wte.weight", {c.vocab_size, D}, options),
                  c.tie_word_embeddings ? std::nullopt
                                        : std::optional<Matrix>(w.take_matrix("lm_head.weight", {c.vocab_size, D}, options)));
      position_embedding_ = own(take("wpe.weight", {c.max_positions, D}));
      final_weight_ = own(take("ln_f.weight", {D}));
      final_bias_ = own(take("ln_f.bias", {D}));
    }
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = fmt::format("h.{}.", i);
      Gpt2Layer l;
      if (!loads_block(options, i)) {
        layers_.push_back(std::move(l));
        continue;
      }
      l.ln1_weight = own(take(p + "ln_1.weight", {D}));
      l.ln1_bias = own(take(p + "ln_1.bias", {D}));
      l.qkv = conv1d(p + "attn.c_attn", D, 3 * D);
      l.out = conv1d(p + "attn.c_proj", D, D);
      l.ln2_weight = own(take(p + "ln_2.weight", {D}));
      l.ln2_bias = own(take(p + "ln_2.bias", {D}));
      l.fc = conv1d(p + "mlp.c_fc", D, I);
      l.proj = conv1d(p + "mlp.c_proj", I, D);
      l.scale = c.attention_scale / (c.scale_attn_by_inverse_layer_idx ? static_cast<double>(i + 1) : 1.0);
      layers_.push_back(std::move(l));
    }
  }

  std::unique_ptr<BlockContext> begin(const at::Tensor& latents, const Attention& attention,
                                      KVCache* cache) const override {
    return std::make_unique<AttentionContext>(attention, latents.size(1), config_.sliding_windows, cache);
  }

  at::Tensor input(const at::Tensor& latents, const BlockContext& base) const override {
    const auto& ctx = static_cast<const AttentionContext&>(base);
    return latents + at::embedding(position_embedding_, ctx.attention.positions);
  }

  at::Tensor block(int64_t index, const at::Tensor& x, const BlockContext& base) const override {
    const auto& ctx = static_cast<const AttentionContext&>(base);
    const ModelConfig& c = config_;
    const int64_t B = x.size(0), T = x.size(1), H = c.num_heads, hd = c.head_dim, D = c.hidden_size;
    const Gpt2Layer& l = layers_[static_cast<std::size_t>(index)];
    at::Tensor h = at::layer_norm(x, {D}, l.ln1_weight, l.ln1_bias, c.norm_eps);
    auto qkv = l.qkv(h).split(D, -1);  // 3 × [B,T,D]
    auto heads = [&](const at::Tensor& t) { return t.view({B, T, H, hd}).transpose(1, 2); };
    const auto [k, v] = ctx.keys_values(index, heads(qkv[1]), heads(qkv[2]));  // with a cache: every slot's
    at::Tensor attn = attend(heads(qkv[0]), k, v, ctx.mask(std::nullopt), l.scale);
    at::Tensor out = x + l.out(attn);
    h = at::layer_norm(out, {D}, l.ln2_weight, l.ln2_bias, c.norm_eps);
    return out + l.proj(activate(l.fc(h), c.activation));
  }

  at::Tensor final_norm(const at::Tensor& x) const override {
    const int64_t D = config_.hidden_size;
    return at::layer_norm(x, {D}, final_weight_, final_bias_, config_.norm_eps);
  }

 private:
  std::vector<Gpt2Layer> layers_;
  at::Tensor position_embedding_;         // [max_positions, D]
  at::Tensor final_weight_, final_bias_;  // [D]
};

}  // namespace

std::unique_ptr<Model> make_gpt2(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options) {
  return std::make_unique<Gpt2Model>(config, weights, options);
}

}  // namespace aios::backbone
