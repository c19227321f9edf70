// Qwen3-Next and Qwen3.5/3.6 language models (Family::kQwen3Next): Gated DeltaNet layers (a causal
// depthwise convolution over q, k, v, then the gated delta rule, its output normalised and gated
// by z) between gated attention layers (q/k norm per head, partial rotary, output times
// sigmoid(gate)); (1 + w) RMSNorm around each; a dense MLP or experts beside a gated shared
// expert. Multi-token-prediction weights (mtp.*) are not read.
//
// Padding: a recurrent layer has no mask to skip a slot with, so each row's valid slots are read
// in order with the padding moved after them, where β = 0 and g = 0 leave the state unchanged;
// the outputs go back to their slots. A row thus computes as it would alone without its padding,
// wherever the padding lies (transformers' zeroed inputs agree for left padding only).
//
// Load-time layout: each DeltaNet's input projections become one D -> [q|k|v|z|b|a] matrix (from
// Qwen3-Next's per-key-head groups or Qwen3.5's separate matrices), each attention's q_proj
// (query and gate interleaved per head) one D -> [q|k|v|gate] matrix.
#include <optional>
#include <tuple>

#include <fmt/format.h>

#include "architectures.h"
#include "delta_rule.h"
#include "experts.h"
#include "layers.h"
#include "rotary.h"

namespace aios::backbone {

namespace {

struct DeltaNet {
  Linear in;           // D -> C + Hv·dv + 2·Hv: q, k, v (C = 2·Hk·dk + Hv·dv, the convolution's channels), z, b, a
  at::Tensor conv;     // [C,1,kernel], depthwise, model dtype
  at::Tensor neg_a;    // [Hv] float32: -exp(A_log)
  at::Tensor dt_bias;  // [Hv] float32
  at::Tensor norm;     // [dv]: the gated norm's weight (w, not 1 + w), model dtype
  Linear out;          // Hv·dv -> D
};

struct GatedAttention {
  Linear qkv;                 // D -> H·hd (q) + 2·Hkv·hd (k, v) + H·hd (the output gate)
  Linear out;                 // H·hd -> D
  at::Tensor q_norm, k_norm;  // [hd] each, 1 + w, float32
};

struct Layer {
  at::Tensor input_norm, mlp_norm;  // [D] each, 1 + w, float32
  std::optional<DeltaNet> delta;    // a recurrent layer; else `attention`
  GatedAttention attention;
  FeedForward mlp;
};

class Qwen3NextModel final : public ProjectingModel {
 public:
  Qwen3NextModel(const ModelConfig& config, const WeightSource& w, const LoadOptions& options)
      : ProjectingModel(config, options), rotary_(config.rope, options.device) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, I = c.intermediate_size;
    auto norm = [&](const std::string& name, int64_t size) { return load_offset_norm(w, name, size, options); };
    if (options.tables) {
      load_tables(w, options);
      final_norm_ = norm("model.norm.weight", D);
    }
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = fmt::format("model.layers.{}.", i);
      Layer l;
      if (loads_block(options, i)) {
        l.input_norm = norm(p + "input_layernorm.weight", D);
        l.mlp_norm = norm(p + "post_attention_layernorm.weight", D);
        if (c.delta_net.layers[static_cast<std::size_t>(i)]) {
          l.delta = load_delta_net(w, p + "linear_attn.", options);
        } else {
          l.attention = load_attention(w, p + "self_attn.", options);
        }
        l.mlp = !c.moe.layers.empty() && c.moe.layers[static_cast<std::size_t>(i)] ? load_experts(w, p, options)
                                                                                    : load_mlp(w, p + "mlp.", I, options);
      }
      layers_.push_back(std::move(l));
    }
  }

  struct Context final : AttentionContext {
    using AttentionContext::AttentionContext;
    at::Tensor cos, sin;  // [B,1,T,rotary_dim] rotary tables in the model dtype
    // With padding: the slot each recurrent step reads (each row's valid slots first, in order),
    // its inverse, and which steps are valid. All int64 [B,T] (live: bool); undefined without padding.
    at::Tensor order, restore, live;
    at::Tensor count;  // int64 [B]: valid slots per row; undefined without padding
  };

  std::unique_ptr<BlockContext> begin(const at::Tensor& latents, const Attention& attention,
                                      KVCache* cache) const override {
    auto context = std::make_unique<Context>(attention, latents.size(1), config_.sliding_windows, cache);
    std::tie(context->cos, context->sin) = rotary_.tables(attention.positions, dtype_);
    const at::Tensor& valid = attention.key_padding;
    if (valid.defined() && !valid.all().item<bool>()) {
      context->order = std::get<1>(valid.logical_not().to(at::kByte).sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
      context->restore = context->order.argsort(/*stable=*/false, /*dim=*/1);
      context->count = valid.sum(1);
      context->live = at::arange(valid.size(1), context->count.options()).unsqueeze(0).lt(context->count.unsqueeze(1));
    }
    return context;
  }

  at::Tensor input(const at::Tensor& latents, const BlockContext&) const override { return latents; }

  at::Tensor block(int64_t index, const at::Tensor& x, const BlockContext& base) const override {
    const auto& ctx = static_cast<const Context&>(base);
    const ModelConfig& c = config_;
    const Layer& l = layers_[static_cast<std::size_t>(index)];
    const at::Tensor h = offset_rms_norm(x, l.input_norm, c.norm_eps);
    const at::Tensor out = x + (l.delta ? delta_net(*l.delta, index, h, ctx) : attention(l.attention, index, h, ctx));
    const at::Tensor m = l.mlp(offset_rms_norm(out, l.mlp_norm, c.norm_eps), c.activation,
                               ctx.routing != nullptr ? &(*ctx.routing)[index] : nullptr);
    return out + m;
  }

  at::Tensor final_norm(const at::Tensor& x) const override { return offset_rms_norm(x, final_norm_, config_.norm_eps); }

 private:
  DeltaNet load_delta_net(const WeightSource& w, const std::string& p, const LoadOptions& options) {
    const ModelConfig& c = config_;
    const DeltaNetConfig& d = c.delta_net;
    const int64_t D = c.hidden_size, Hk = d.num_key_heads, Hv = d.num_value_heads, dk = d.key_head_dim,
                  dv = d.value_head_dim, r = Hv / Hk, C = 2 * Hk * dk + Hv * dv;
    auto take = [&](const std::string& name, at::IntArrayRef shape) { return w.take(p + name, shape, options); };
    auto dense = [&](const std::string& name, at::IntArrayRef shape) { return w.take(p + name, shape, taking(options)); };
    std::vector<at::Tensor> rows;  // q, k, v, z, b, a, each [n,D]
    if (d.grouped) {
      // Per key head g: its q [dk], k [dk], then its r value heads' v [r·dv] and z [r·dv]; b and a likewise.
      const auto qkvz = dense("in_proj_qkvz.weight", {2 * Hk * dk + 2 * Hv * dv, D})
                            .view({Hk, 2 * dk + 2 * r * dv, D})
                            .split_with_sizes({dk, dk, r * dv, r * dv}, 1);
      const auto ba = dense("in_proj_ba.weight", {2 * Hv, D}).view({Hk, 2 * r, D}).split_with_sizes({r, r}, 1);
      for (const at::Tensor& part : qkvz) rows.push_back(part.reshape({-1, D}));
      for (const at::Tensor& part : ba) rows.push_back(part.reshape({-1, D}));
    } else {
      rows = {dense("in_proj_qkv.weight", {C, D}), dense("in_proj_z.weight", {Hv * dv, D}), dense("in_proj_b.weight", {Hv, D}),
              dense("in_proj_a.weight", {Hv, D})};
    }
    DeltaNet n;
    n.in = project(kept(at::cat(rows), options, p + "in_proj"));
    n.conv = own(take("conv1d.weight", {C, 1, d.conv_kernel}));
    n.neg_a = own(-take("A_log", {Hv}).to(at::kFloat).exp());
    n.dt_bias = own(take("dt_bias", {Hv}).to(at::kFloat));
    n.norm = own(take("norm.weight", {dv}));
    n.out = project(w.take_matrix(p + "out_proj.weight", {D, Hv * dv}, options));
    return n;
  }

  GatedAttention load_attention(const WeightSource& w, const std::string& p, const LoadOptions& options) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, H = c.num_heads, K = c.num_kv_heads, hd = c.head_dim;
    auto dense = [&](const std::string& name, at::IntArrayRef shape) { return w.take(p + name, shape, taking(options)); };
    // q_proj holds each head's query [hd] then its gate [hd].
    auto query_gate = [&](const at::Tensor& t) { return t.view({H, 2, hd, -1}).unbind(1); };  // rows or a bias
    const auto qg = query_gate(dense("q_proj.weight", {2 * H * hd, D}).view({2 * H * hd, D}));
    const at::Tensor weight = at::cat({qg[0].reshape({H * hd, D}), dense("k_proj.weight", {K * hd, D}),
                                       dense("v_proj.weight", {K * hd, D}), qg[1].reshape({H * hd, D})});
    at::Tensor bias;
    if (c.qkv_bias) {
      const auto qgb = query_gate(w.take(p + "q_proj.bias", {2 * H * hd}, options).view({2 * H * hd, 1}));
      bias = at::cat({qgb[0].reshape(-1), w.take(p + "k_proj.bias", {K * hd}, options),
                      w.take(p + "v_proj.bias", {K * hd}, options), qgb[1].reshape(-1)});
    }
    GatedAttention a;
    a.qkv = project(kept(weight, options, p + "q_proj"), bias);
    a.out = project(w.take_matrix(p + "o_proj.weight", {D, H * hd}, options),
                    c.out_bias ? w.take(p + "o_proj.bias", {D}, options) : at::Tensor());
    a.q_norm = load_offset_norm(w, p + "q_norm.weight", hd, options);
    a.k_norm = load_offset_norm(w, p + "k_norm.weight", hd, options);
    return a;
  }

  // h [B,T,D] -> [B,T,D]
  at::Tensor attention(const GatedAttention& l, int64_t index, const at::Tensor& h, const Context& ctx) const {
    const ModelConfig& c = config_;
    const int64_t B = h.size(0), T = h.size(1), H = c.num_heads, K = c.num_kv_heads, hd = c.head_dim;
    const auto parts = l.qkv(h).split_with_sizes({H * hd, K * hd, K * hd, H * hd}, -1);
    at::Tensor q = offset_rms_norm(parts[0].view({B, T, H, hd}), l.q_norm, c.norm_eps).transpose(1, 2);  // [B,H,T,hd]
    at::Tensor k = offset_rms_norm(parts[1].view({B, T, K, hd}), l.k_norm, c.norm_eps).transpose(1, 2);  // [B,K,T,hd]
    at::Tensor v = parts[2].view({B, T, K, hd}).transpose(1, 2);
    q = rotary_.apply(q, ctx.cos, ctx.sin);
    k = rotary_.apply(k, ctx.cos, ctx.sin);
    std::tie(k, v) = ctx.keys_values(index, k, v);
    const at::Tensor attn = attend(q, k, v, ctx.mask(std::nullopt), c.attention_scale);  // [B,T,H*hd]
    return l.out(attn * at::sigmoid(parts[3]));
  }

  // h [B,T,D] -> [B,T,D]; with a cache, continues from the layer's state and leaves the new one.
  at::Tensor delta_net(const DeltaNet& l, int64_t index, const at::Tensor& h_slots, const Context& ctx) const {
    const ModelConfig& c = config_;
    const DeltaNetConfig& d = c.delta_net;
    const int64_t Hk = d.num_key_heads, Hv = d.num_value_heads, dk = d.key_head_dim, dv = d.value_head_dim,
                  C = 2 * Hk * dk + Hv * dv, kernel = d.conv_kernel;
    const bool padded = ctx.order.defined();
    const at::Tensor h = padded ? h_slots.gather(1, ctx.order.unsqueeze(-1).expand_as(h_slots)) : h_slots;
    const int64_t B = h.size(0), T = h.size(1);
    const auto parts = l.in(h).split_with_sizes({C, Hv * dv, Hv, Hv}, -1);  // mixed, z, b, a

    KVCache* cache = ctx.cache;
    const KVCache::LayerState* before = cache != nullptr ? &cache->state(index) : nullptr;
    const at::Tensor previous = before != nullptr && before->conv.defined()
                                    ? before->conv
                                    : at::zeros({B, C, kernel - 1}, h.options());
    const at::Tensor inputs = at::cat({previous, parts[0].transpose(1, 2)}, 2);  // [B,C,kernel-1+T]
    const at::Tensor mixed = at::silu(at::conv1d(inputs, l.conv, at::Tensor(), at::IntArrayRef{1}, at::IntArrayRef{0}, at::IntArrayRef{1}, C)).transpose(1, 2);  // [B,T,C]
    const auto qkv = mixed.split_with_sizes({Hk * dk, Hk * dk, Hv * dv}, -1);
    at::Tensor beta = at::sigmoid(parts[2]).to(at::kFloat);                              // [B,T,Hv]
    at::Tensor g = l.neg_a * at::softplus(parts[3].to(at::kFloat) + l.dt_bias);       // [B,T,Hv], <= 0
    if (padded) {  // steps past a row's valid slots change nothing
      const at::Tensor live = ctx.live.unsqueeze(-1);
      beta = at::where(live, beta, at::zeros_like(beta));
      g = at::where(live, g, at::zeros_like(g));
    }
    const at::Tensor initial = before != nullptr ? before->recurrent : at::Tensor();
    const at::Tensor q = qkv[0].reshape({B, T, Hk, dk}), k = qkv[1].reshape({B, T, Hk, dk}), v = qkv[2].reshape({B, T, Hv, dv});
    auto [o, state] = T == 1 ? recurrent_delta_rule(q, k, v, g, beta, initial) : chunked_delta_rule(q, k, v, g, beta, initial);

    // The gated norm: RMSNorm in float32, its weight applied in the model dtype, then times silu(z).
    const at::Tensor o32 = o.to(at::kFloat);
    const at::Tensor normed = l.norm * (o32 * at::rsqrt(o32.pow(2).mean(-1, true) + c.norm_eps)).to(dtype_);
    const at::Tensor z = parts[1].reshape({B, T, Hv, dv});
    const at::Tensor gated = (normed * at::silu(z.to(at::kFloat))).to(dtype_).reshape({B, T, Hv * dv});
    at::Tensor y = l.out(gated);

    if (cache != nullptr) {  // each row's last kernel-1 inputs: columns [count, count + kernel - 1) of `inputs`
      const at::Tensor count = padded ? ctx.count : at::full({B}, T, ctx.attention.positions.options());
      const at::Tensor columns = (count.view({B, 1, 1}) + at::arange(kernel - 1, count.options()).view({1, 1, -1}))
                                     .expand({B, C, kernel - 1});
      cache->set_state(index, {inputs.gather(2, columns), state});
    }
    return padded ? y.gather(1, ctx.restore.unsqueeze(-1).expand_as(y)) : y;
  }

  std::vector<Layer> layers_;
  at::Tensor final_norm_;  // [D], 1 + w, float32
  Rotary rotary_;
};

}  // namespace

std::unique_ptr<Model> make_qwen3_next(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options) {
  return std::make_unique<Qwen3NextModel>(config, weights, options);
}

}  // namespace aios::backbone
