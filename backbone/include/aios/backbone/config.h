// aios/backbone/config.h — the architecture description every backbone family is built from.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "aios/export.h"
#include "aios/model_info.h"

AIOS_EXPORT_BEGIN

namespace aios::backbone {

// The block structure a checkpoint's architecture maps onto.
enum class Family {
  kLlama,  // RMSNorm, rotary positions, grouped-query attention, gated MLP or experts: Llama 2/3, SmolLM2,
           // Qwen2/3, Mistral, Mixtral, Qwen-MoE, SmolLM3, OLMo 2, Phi-3, gpt-oss
  kGemma,  // Gemma 2/3: (1+w) RMSNorm before and after attention and MLP, scaled embeddings, GeGLU
  kGpt2,   // LayerNorm, learned positions, fused qkv projection, GELU MLP
  kQwen3Next,  // Qwen3-Next, Qwen3.5/3.6: Gated DeltaNet layers (a recurrent state, no KV cache) between
               // gated attention layers, (1+w) RMSNorm, partial rotary, a dense MLP or experts with a
               // shared expert
};

enum class Activation { kSilu, kGeluExact, kGeluTanh };

// Rotary position embedding: how the inverse frequencies of the first `rotary_dim` channels of each
// head are computed, for every rope type transformers defines (modeling_rope_utils.py).
struct RopeConfig {
  enum class Type {
    kDefault,
    kLinear,    // inverse frequencies / factor
    kDynamic,   // NTK: the base grows with the longest position of a pass past original_max_positions
    kYarn,      // ramp between interpolated and extrapolated frequencies, cos/sin scaled by attention_factor
    kLongrope,  // per-frequency divisors, long_factors for passes reaching past original_max_positions
    kLlama3,    // Llama 3.1's low-frequency rescaling
  };
  Type type = Type::kDefault;
  double theta = 10000.0;
  int64_t rotary_dim = 0;  // channels rotated per head (even, <= head_dim); the rest pass unchanged
  double factor = 1.0;     // linear, dynamic, yarn, llama3
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_positions = 8192;  // llama3, yarn, longrope, dynamic: the pretraining length
  double attention_factor = 1.0;          // cos and sin are multiplied by it (yarn, longrope)
  double beta_fast = 32.0, beta_slow = 1.0;  // yarn: the ramp's bounds, in rotations
  bool truncate = true;                      // yarn: round the ramp's bounds to whole dimensions
  // Divisors of the inverse frequencies, [rotary_dim/2] each, or empty: longrope's short (and long)
  // factors, or the per-frequency factors a GGUF file stores as rope_freqs (kDefault).
  std::vector<double> short_factors, long_factors;
};

// A mixture of experts in place of the MLP on some layers: each token runs the top `top_k` of
// `num_experts` gated MLPs of width `expert_size`, weighted by the router's softmax.
struct MoeConfig {
  int64_t num_experts = 0;  // E; 0 = every layer has the dense MLP
  int64_t top_k = 0;
  int64_t expert_size = 0;
  bool normalize_top_k = false;  // renormalise the k weights to sum to 1 (Mixtral; Qwen's norm_topk_prob)
  int64_t shared_expert_size = 0;  // Qwen2-MoE: a sigmoid-gated shared MLP of this width beside them; 0 = none
  std::vector<bool> layers;        // per layer: experts (true) or the dense MLP of intermediate_size
  // How the checkpoint names them: mlp.experts.N.gate_proj/up_proj/down_proj, Mixtral's
  // block_sparse_moe.experts.N.w1/w3/w2, or gpt-oss's mlp.router and stacked, transposed
  // mlp.experts.gate_up_proj (gate and up channels interleaved) and down_proj, with biases.
  enum class Layout { kQwen, kMixtral, kGptOss };
  Layout layout = Layout::kQwen;
  // gpt-oss: the router has a bias and softmaxes only the k chosen logits (the same weights as
  // renormalising the top k of a full softmax, computed as the reference does); the experts have
  // biases and a clamped SwiGLU, (clamp(up, ±limit) + 1) * g * sigmoid(alpha * g) with
  // g = min(gate, limit). swiglu_limit 0 = the plain gated activation.
  bool softmax_top_k = false;
  double swiglu_limit = 0.0;
  double swiglu_alpha = 1.702;
};

// Gated DeltaNet, the linear attention of Family::kQwen3Next's recurrent layers: per layer a causal
// depthwise convolution over the q, k, v projections and a state [Hv, dk, dv] updated by the gated
// delta rule at every position.
struct DeltaNetConfig {
  std::vector<bool> layers;  // per layer: Gated DeltaNet (true) or gated full attention; empty: none
  int64_t num_key_heads = 0;    // Hk (queries and keys); Hv % Hk == 0
  int64_t num_value_heads = 0;  // Hv
  int64_t key_head_dim = 0;     // dk
  int64_t value_head_dim = 0;   // dv
  int64_t conv_kernel = 0;      // the convolution's width
  // How the checkpoint stores the input projections: Qwen3-Next's in_proj_qkvz and in_proj_ba,
  // grouped per key head, or Qwen3.5's separate in_proj_qkv, in_proj_z, in_proj_b, in_proj_a.
  bool grouped = false;
};

// RMSNorm of queries and keys before rotary.
enum class QkNorm {
  kNone,
  kPerHead,  // over each head's channels, one [head_dim] weight (Qwen3)
  kWhole,    // over all heads' channels of the projection, [H*head_dim] and [Hkv*head_dim] (OLMo 2)
};

struct ModelConfig {
  std::string architecture;  // the checkpoint's own name, e.g. "LlamaForCausalLM"
  Family family = Family::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // D
  int64_t intermediate_size = 0;  // MLP width
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // query heads H
  int64_t num_kv_heads = 0;  // key/value heads; H % num_kv_heads == 0
  int64_t head_dim = 0;
  int64_t max_positions = 0;  // positions must lie in [0, max_positions)
  double norm_eps = 1e-5;
  Activation activation = Activation::kSilu;
  RopeConfig rope;             // kLlama, kGemma (Gemma 3: its global layers')
  std::optional<RopeConfig> local_rope;  // Gemma 3: the sliding-window layers' own frequencies
  bool qkv_bias = false;       // biases on the q, k, v projections
  bool out_bias = false;       // bias on the attention output projection
  bool mlp_bias = false;       // biases on the MLP projections
  QkNorm qk_norm = QkNorm::kNone;
  // Where a block normalises: its attention and MLP inputs (Llama), or instead their outputs before
  // each residual add (OLMo 2).
  bool norm_outputs = false;
  // In reduced precision RMSNorm multiplies by its weight in float32, then casts (OLMo 2, gpt-oss);
  // otherwise it casts the normalised input first (Llama).
  bool norm_scale_float32 = false;
  // gpt-oss: each head has a learned sink logit, a key with no value that joins the softmax and
  // takes its share of the attention ([H] weights named self_attn.sinks).
  bool attention_sinks = false;
  // Per layer: whether queries and keys are rotated; empty = every layer (SmolLM3 leaves some out).
  std::vector<bool> rope_layers;
  // The checkpoint stores q, k, v as one qkv_proj and gate, up as one gate_up_proj (Phi-3).
  bool packed_projections = false;
  MoeConfig moe;
  DeltaNetConfig delta_net;  // kQwen3Next
  double embedding_scale = 1.0;      // embed() returns the rows times this (Gemma: sqrt(D), in the model dtype)
  double attn_logit_softcap = 0.0;   // attention scores s become cap * tanh(s / cap) (Gemma 2); 0 = none
  double final_logit_softcap = 0.0;  // logits likewise (Gemma 2, Gemma 3 where configured); 0 = none
  bool tie_word_embeddings = false;
  // Where a multimodal checkpoint keeps its language model: tensor names that begin with
  // `weight_prefix_replaces` begin with `weight_prefix` there instead ("" -> "language_model." for
  // Gemma3ForConditionalGeneration: language_model.model.layers.N...; "model." ->
  // "model.language_model." for Qwen3_5ForConditionalGeneration, whose lm_head keeps its name).
  std::string weight_prefix;
  std::string weight_prefix_replaces;
  // Per layer: a key may be attended only if query_index - key_index < window. Empty = no windows.
  std::vector<std::optional<int64_t>> sliding_windows;
  double attention_scale = 0.0;              // softmax scale; 1/sqrt(head_dim) unless the config says otherwise
  bool scale_attn_by_inverse_layer_idx = false;  // GPT-2 option: scale layer i by 1/(i+1) as well
  // Special tokens as config.json names them (bos_token_id, eos_token_id: one or a list,
  // pad_token_id); a negative id, as some configs write for none, is none.
  std::optional<int64_t> bos_id;
  std::vector<int64_t> eos_ids;
  std::optional<int64_t> pad_id;
};

// Whether some layers keep a recurrent state instead of keys and values (DeltaNetConfig). Such a
// model reads each row's positions in slot order and cannot follow a full [B,T,T] mask.
inline bool has_recurrent_layers(const ModelConfig& c) { return !c.delta_net.layers.empty(); }

// Parses a Hugging Face config.json text. Throws Error(kInvalidArgument) for an unknown architecture
// or an unsupported or inconsistent value, naming the field ("config.rope_scaling.rope_type", ...).
ModelConfig parse_hf_config(const std::string& json_text, const std::string& source = "config.json");

// "llama", "gpt2": the family's name for messages and the CLI.
const char* family_name(Family family);

// The public description of a model of this config (aios/model_info.h), dtype and device left empty
// for the backbone that runs it.
ModelInfo describe(const ModelConfig& config);

}  // namespace aios::backbone
AIOS_EXPORT_END
