// Internal: building blocks shared by the architectures.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "aios/backbone/config.h"
#include "aios/backbone/kv_cache.h"
#include "aios/backbone/model.h"
#include "packed.h"
#include "weights.h"

namespace aios::backbone {

// The boolean attention mask [B,1,T,T] for one layer (true = may attend), or an undefined tensor when
// plain causal order applies and SDPA's is_causal path can be used. Rows left with no visible key
// (padding queries) get their own key so softmax stays finite; their outputs carry no meaning.
at::Tensor attention_mask(const Attention& attention, int64_t seq_len, std::optional<int64_t> window);

// q [B,H,T,hd], k and v [B,Hkv,T,hd] -> [B,T,H*hd] via scaled-dot-product attention. With
// `softcap` > 0 the scores s become softcap * tanh(s / softcap) before the mask (Gemma 2). With
// `sinks` [H], each head's sink logit joins its softmax as a key without a value (gpt-oss).
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                  double scale, double softcap = 0.0, const at::Tensor& sinks = {});

// x [..., D] -> x · rsqrt(mean(x²) + eps) · weight [D] over the last dimension, differentiable in
// x (weight is frozen). Float32 on the CPU runs one pass per row; ATen's rms_norm runs as six
// operations there, which at a decoding step's size cost more than the arithmetic. Other dtypes
// and devices use ATen's.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// RMSNorm scaling by (1 + w) (Gemma, Qwen3-Next): x normalised and multiplied by `one_plus_w` [D]
// in its dtype (float32, or float64 for a float64 model), then cast back, as the references compute.
at::Tensor offset_rms_norm(const at::Tensor& x, const at::Tensor& one_plus_w, double eps);

at::Tensor activate(const at::Tensor& x, Activation activation);

// Whether a projection weight of this dtype and device is kept as [in,out], its product x·W: on the
// CPU in float32 and float64, where MKL runs x·W 1.0–1.9× faster than x·Wᵀ at the widths of the
// supported families (bench/RESULTS.md, "Projection layout"). In bfloat16 and float16 x·W is ten
// times slower there, and CUDA needs neither, so those keep [out,in], as checkpoints store it.
bool keep_in_out(c10::ScalarType dtype, c10::Device device);

// A projection x·Wᵀ + b with its weight expanded in the layout keep_in_out() picks, or stored.
struct Linear {
  // weight [out,in] (or [in,out] when `in_out`, as GPT-2's Conv1D stores it), bias [out] or undefined.
  static Linear of(const at::Tensor& weight, at::Tensor bias = {}, bool in_out = false);
  // weight [out,in], expanded or stored.
  static Linear of(const Matrix& weight, at::Tensor bias = {});
  // x [..., in] -> [..., out]
  at::Tensor operator()(const at::Tensor& x) const;
  bool defined() const { return weight.defined() || packed != nullptr; }

  at::Tensor weight;                           // [in,out] when `in_out`, else [out,in]; undefined when stored
  std::shared_ptr<const PackedMatrix> packed;  // [out,in] when stored
  at::Tensor bias;                             // [out] or undefined
  bool in_out = false;
};

struct FeedForward;  // experts.h

// The families' base: a Model that builds its projections as Linear, their tensors remembered.
class ProjectingModel : public Model {
 protected:
  using Model::Model;
  // The gated MLP of width I under `prefix` ("model.layers.N.mlp."): gate_proj, up_proj, down_proj
  // (gate_up_proj with ModelConfig::packed_projections), with biases when ModelConfig::mlp_bias.
  FeedForward load_mlp(const WeightSource& w, const std::string& prefix, int64_t I, const LoadOptions& options);
  // The router and experts of the layer named by `prefix` as ModelConfig::moe names them, stacked
  // [E,...] (one tensor per kind, fused gate_up_proj included) or one expert at a time; the shared
  // expert and its gate when MoeConfig::shared_expert_size > 0.
  FeedForward load_experts(const WeightSource& w, const std::string& prefix, const LoadOptions& options);
  Linear project(const at::Tensor& weight, const at::Tensor& bias = {}, bool in_out = false) {
    return remember(Linear::of(weight, bias, in_out));
  }
  Linear project(const Matrix& weight, const at::Tensor& bias = {}) { return remember(Linear::of(weight, bias)); }
  // The [V,D] token embedding and output head (the embedding again when tied).
  void load_tables(const Matrix& embedding, const std::optional<Matrix>& head);
  // The same from a Hugging Face folder's model.embed_tokens.weight and, unless tied, lm_head.weight.
  void load_tables(const WeightSource& w, const LoadOptions& options);
  // A (1 + w) norm's factor [size] from its weight `name` in the model dtype, held in float32 (float64
  // for a float64 model): the factor the references form on every call (Gemma, Qwen3-Next).
  at::Tensor load_offset_norm(const WeightSource& w, const std::string& name, int64_t size, const LoadOptions& options);

 private:
  Linear remember(Linear l) {
    own(l.weight);
    own(l.packed);
    own(l.bias);
    return l;
  }
};

// The attention projections of the layer named by `prefix` ("model.layers.N."): q, k and v as one
// [(H+2Hkv)*hd, D] matrix (packed in the checkpoint as qkv_proj with ModelConfig::packed_projections),
// and their biases [(H+2Hkv)*hd] with ModelConfig::qkv_bias (else undefined).
std::pair<Matrix, at::Tensor> load_qkv(const WeightSource& w, const std::string& prefix, const ModelConfig& c,
                                       const LoadOptions& options);

// The mask [B,1,T,S] of a cached pass whose T slots were appended last to `cache` (S slots in all):
// each new slot sees the valid slots up to itself, within `window` positions when given. Undefined
// (plain causal order) for the first pass into an empty cache without padding or a window.
at::Tensor cached_attention_mask(const KVCache& cache, std::optional<int64_t> window);

// What the blocks of one pass share: the attention description and one mask per distinct window,
// all built up front so that concurrent backward passes only read it.
struct AttentionContext : Model::BlockContext {
  // windows: the model's per-layer windows (empty = none). With a cache, the pass's slots were
  // appended to it already and attention spans the cached slots too.
  AttentionContext(const Attention& attention, int64_t seq_len, const std::vector<std::optional<int64_t>>& windows,
                   KVCache* cache = nullptr);
  // The mask for layers with `window` (see attention_mask()).
  const at::Tensor& mask(std::optional<int64_t> window) const;
  // The keys and values layer `layer` attends to: k and v themselves ([B,Hkv,T,hd]), or with a
  // cache, every cached slot's after storing these.
  std::pair<at::Tensor, at::Tensor> keys_values(int64_t layer, const at::Tensor& k, const at::Tensor& v) const;

  Attention attention;
  KVCache* cache = nullptr;

 private:
  std::vector<std::pair<std::optional<int64_t>, at::Tensor>> masks_;
};

}  // namespace aios::backbone
