#include "layers.h"

#include <cmath>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "packed_simd.h"

namespace aios::backbone {

namespace {

struct RmsNorm : torch::autograd::Function<RmsNorm> {
  // x [..., D] float32 contiguous, weight [D] float32 contiguous
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    const int64_t D = x.size(-1), rows = x.numel() / D;
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = 1;
    at::Tensor y = at::empty_like(x), scale = at::empty(shape, x.options());  // scale: rsqrt(mean(x²) + eps)
    const float* xs = x.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    float* ys = y.data_ptr<float>();
    float* rs = scale.data_ptr<float>();
    const float epsilon = static_cast<float>(eps);
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = xs + r * D;
        const float s = 1.0f / std::sqrt(simd::dot(xr, xr, D) / static_cast<float>(D) + epsilon);
        rs[r] = s;
        for (int64_t k = 0; k < D; ++k) ys[r * D + k] = xr[k] * s * w[k];
      }
    });
    ctx->save_for_backward({x, scale});
    ctx->saved_data["weight"] = weight;
    return y;
  }

  // grad_x = s·(g⊙w) − x·s³·mean((g⊙w)⊙x), with s = rsqrt(mean(x²) + eps) per row.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &s = saved[1];
    const at::Tensor gw = grads[0] * ctx->saved_data["weight"].toTensor();
    return {gw * s - x * (s.pow(3) * (gw * x).mean(-1, /*keepdim=*/true)), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
      !weight.requires_grad()) {
    return RmsNorm::apply(x.contiguous(), weight.contiguous(), eps);
  }
  return at::rms_norm(x, {x.size(-1)}, weight, eps);
}

at::Tensor offset_rms_norm(const at::Tensor& x, const at::Tensor& one_plus_w, double eps) {
  if (x.scalar_type() == one_plus_w.scalar_type()) return rms_norm(x, one_plus_w, eps);
  const at::Tensor x32 = x.to(one_plus_w.scalar_type());
  return (x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps) * one_plus_w).to(x.scalar_type());
}

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

at::Tensor cached_attention_mask(const KVCache& cache, std::optional<int64_t> window) {
  const int64_t S = cache.length(), begin = cache.pass_begin(), T = S - begin;
  const at::Tensor valid = cache.valid(), positions = cache.positions();  // [B,S]
  const bool windowed = window.has_value() && *window < S;
  if (begin == 0 && !windowed && valid.all().item<bool>()) return {};  // a fresh unpadded prompt: plain causal
  const auto device = valid.device();
  const at::Tensor query_slot = at::arange(begin, S, at::TensorOptions().dtype(at::kLong).device(device));
  const at::Tensor key_slot = at::arange(S, at::TensorOptions().dtype(at::kLong).device(device));
  at::Tensor mask = key_slot.unsqueeze(0).le(query_slot.unsqueeze(1)).unsqueeze(0);  // [1,T,S] slot order
  mask = mask.logical_and(valid.unsqueeze(1));                                          // [B,T,S]
  if (windowed) {
    const at::Tensor distance = positions.narrow(1, begin, T).unsqueeze(2) - positions.unsqueeze(1);  // [B,T,S]
    mask = mask.logical_and(distance.lt(*window));
  }
  // A query with nothing to see (a padding slot) sees itself, so that softmax stays finite.
  const at::Tensor self = key_slot.unsqueeze(0).eq(query_slot.unsqueeze(1)).unsqueeze(0);  // [1,T,S]
  mask = mask.logical_or(self.logical_and(mask.any(-1, /*keepdim=*/true).logical_not()));
  return mask.unsqueeze(1);
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                  double scale, double softcap, const at::Tensor& sinks) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), K = k.size(1);
  if (softcap > 0 || sinks.defined()) {
    // No fused kernel takes a cap or sinks, so the reference's eager steps, softmax in float32.
    const at::Tensor keys = k.repeat_interleave(H / K, 1), values = v.repeat_interleave(H / K, 1);  // [B,H,S,hd]
    const int64_t S = keys.size(2);
    at::Tensor scores = at::matmul(q, keys.transpose(-1, -2)) * scale;  // [B,H,T,S]
    if (softcap > 0) scores = at::tanh(scores / softcap) * softcap;
    const at::Tensor visible = mask.defined() ? mask : at::ones({T, S}, q.options().dtype(at::kBool)).tril();
    scores = scores.masked_fill(visible.logical_not(), -INFINITY);
    const at::ScalarType precise = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor probs;
    if (sinks.defined()) {  // the sink's column joins the softmax, then is dropped: [B,H,T,S+1] -> [B,H,T,S]
      const at::Tensor sink = sinks.to(scores.scalar_type()).view({1, H, 1, 1}).expand({B, H, T, 1});
      probs = at::softmax(at::cat({scores, sink}, -1), -1, precise).narrow(-1, 0, S);
    } else {
      probs = at::softmax(scores, -1, precise);
    }
    const at::Tensor out = at::matmul(probs.to(q.scalar_type()), values);  // [B,H,T,hd]
    return out.transpose(1, 2).reshape({B, T, H * hd});
  }
  if (T == 1 && mask.defined()) {
    // One query (a decoding step): two small matrix products beat the fused kernel's set-up by far.
    // Query heads are grouped by the key/value head they share: head h uses k/v head h / (H/K).
    const at::Tensor grouped = q.reshape({B, K, H / K, hd});                                   // [B,K,G,hd]
    at::Tensor scores = at::matmul(grouped, k.transpose(-1, -2)).to(at::kFloat).mul_(scale);  // [B,K,G,S]
    scores.masked_fill_(mask.logical_not(), -INFINITY);                                         // mask [B,1,1,S]
    const at::Tensor out = at::matmul(scores.softmax(-1).to(v.scalar_type()), v);              // [B,K,G,hd]
    return out.reshape({B, 1, H * hd});
  }
  const bool gqa = H != K;
  at::Tensor out;
  if (mask.defined()) {
    out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, /*is_causal=*/false, scale, gqa);
  } else {
    out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale, gqa);
  }
  // [B,H,T,hd] -> [B,T,H*hd]
  return out.transpose(1, 2).reshape({B, T, H * hd});
}

at::Tensor activate(const at::Tensor& x, Activation activation) {
  switch (activation) {
    case Activation::kSilu: return at::silu(x);
    case Activation::kGeluExact: return at::gelu(x);
    case Activation::kGeluTanh: return at::gelu(x, "tanh");
  }
  return x;
}

bool keep_in_out(c10::ScalarType dtype, c10::Device device) {
  return device.is_cpu() && (dtype == at::kFloat || dtype == at::kDouble);
}

Linear Linear::of(const at::Tensor& weight, at::Tensor bias, bool in_out) {
  Linear l;
  l.in_out = keep_in_out(weight.scalar_type(), weight.device());
  l.weight = l.in_out == in_out ? weight : weight.t().contiguous();
  l.bias = std::move(bias);
  return l;
}

Linear Linear::of(const Matrix& weight, at::Tensor bias) {
  if (!weight.packed) return of(weight.dense, std::move(bias));
  Linear l;
  l.packed = weight.packed;
  l.bias = std::move(bias);
  return l;
}

at::Tensor Linear::operator()(const at::Tensor& x) const {
  if (packed) {
    at::Tensor y = packed_product(x, packed);
    return bias.defined() ? y + bias : y;
  }
  if (!in_out) return at::linear(x, weight, bias);
  const int64_t in = weight.size(0);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = weight.size(1);
  const at::Tensor rows = x.reshape({-1, in});
  return (bias.defined() ? at::addmm(bias, rows, weight) : at::mm(rows, weight)).view(shape);
}

void ProjectingModel::load_tables(const Matrix& embedding, const std::optional<Matrix>& head) {
  token_embedding_ = own(embedding.dense);
  packed_embedding_ = own(embedding.packed);
  output_head_ = head ? own(head->dense) : token_embedding_;
  packed_head_ = head ? own(head->packed) : packed_embedding_;
}

void ProjectingModel::load_tables(const WeightSource& w, const LoadOptions& options) {
  const int64_t V = config_.vocab_size, D = config_.hidden_size;
  load_tables(w.take_matrix("model.embed_tokens.weight", {V, D}, options),
              config_.tie_word_embeddings ? std::nullopt : std::optional(w.take_matrix("lm_head.weight", {V, D}, options)));
}

at::Tensor ProjectingModel::load_offset_norm(const WeightSource& w, const std::string& name, int64_t size,
                                             const LoadOptions& options) {
  const at::ScalarType precise = options.dtype == at::kDouble ? at::kDouble : at::kFloat;
  return own(1.0 + w.take(name, {size}, options).to(precise));
}

std::pair<Matrix, at::Tensor> load_qkv(const WeightSource& w, const std::string& prefix, const ModelConfig& c,
                                       const LoadOptions& options) {
  const int64_t D = c.hidden_size, hd = c.head_dim, H = c.num_heads, K = c.num_kv_heads;
  auto take = [&](const char* name, at::IntArrayRef shape) { return w.take(prefix + name, shape, options); };
  auto matrix = [&](const char* name, at::IntArrayRef shape) { return w.take_matrix(prefix + name, shape, options); };
  Matrix weight;
  at::Tensor bias;
  if (c.packed_projections) {
    weight = matrix("self_attn.qkv_proj.weight", {(H + 2 * K) * hd, D});
  } else {
    weight = Matrix::stack({matrix("self_attn.q_proj.weight", {H * hd, D}), matrix("self_attn.k_proj.weight", {K * hd, D}),
                            matrix("self_attn.v_proj.weight", {K * hd, D})});
  }
  if (c.qkv_bias) {
    bias = at::cat({take("self_attn.q_proj.bias", {H * hd}), take("self_attn.k_proj.bias", {K * hd}),
                    take("self_attn.v_proj.bias", {K * hd})});
  }
  return {weight, bias};
}

AttentionContext::AttentionContext(const Attention& a, int64_t seq_len,
                                   const std::vector<std::optional<int64_t>>& windows, KVCache* kv_cache)
    : attention(a), cache(kv_cache) {
  auto add = [&](std::optional<int64_t> window) {
    for (const auto& entry : masks_) {
      if (entry.first == window) return;
    }
    masks_.emplace_back(window, cache != nullptr ? cached_attention_mask(*cache, window)
                                                 : attention_mask(attention, seq_len, window));
  };
  if (windows.empty()) add(std::nullopt);
  for (const auto& window : windows) add(window);
}

std::pair<at::Tensor, at::Tensor> AttentionContext::keys_values(int64_t layer, const at::Tensor& k,
                                                                const at::Tensor& v) const {
  if (cache == nullptr) return {k, v};
  return cache->store(layer, k, v);
}

const at::Tensor& AttentionContext::mask(std::optional<int64_t> window) const {
  for (const auto& [w, m] : masks_) {
    if (w == window) return m;
  }
  return masks_.front().second;  // unreachable: every layer's window was added up front
}

}  // namespace aios::backbone
