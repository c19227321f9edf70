// aios/model_info.h — what a backbone says about the model it runs. No LibTorch.
//
// An in-process backbone (local::LocalBackbone) and a hosted one (server::RemoteBackbone, the thin
// aios::client::Client) fill it the same way: the host sends its own description in Latent.Info,
// so what a client reads is what the host has. It describes; the loader's own configuration
// (backbone::ModelConfig) stays the loader's.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios {

// Rotary position embedding frequencies.
struct RopeInfo {
  // "default", "linear" (positions / factor), "dynamic" (NTK), "yarn", "longrope", "llama3" (Llama
  // 3.1 low-frequency rescaling), as transformers names them.
  std::string type = "default";
  double theta = 10000.0;  // base of the frequencies
  int64_t rotary_dim = 0;  // channels rotated per head; the rest of head_dim passes unrotated
  double factor = 1.0;     // linear, dynamic, yarn, longrope, llama3
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_positions = 8192;  // the pretraining length the scaled types start from
  double attention_factor = 1.0;          // cos and sin are multiplied by it (yarn, longrope)

  friend AIOS_EXPORT bool operator==(const RopeInfo&, const RopeInfo&);
  friend bool operator!=(const RopeInfo& a, const RopeInfo& b) { return !(a == b); }
};

// The resident memory of one kind of frozen weights.
struct WeightKind {
  // "float32", "bfloat16", ... (weights converted to that dtype), the GGUF type a stored
  // tensor keeps ("Q4_1", "Q8_0", "F16", ...), or "int8"/"int4" (quantised at load).
  std::string kind;
  int64_t tensors = 0;   // distinct tensors (stored: row segments of one type) of that kind
  int64_t elements = 0;  // their values
  int64_t bytes = 0;     // their resident bytes

  friend AIOS_EXPORT bool operator==(const WeightKind&, const WeightKind&);
  friend bool operator!=(const WeightKind& a, const WeightKind& b) { return !(a == b); }
};

struct ModelInfo {
  std::string architecture;  // the checkpoint's own name, e.g. "LlamaForCausalLM"
  // The block structure: "llama" (RMSNorm, rotary positions, grouped-query attention, gated MLP:
  // Llama, SmolLM2/3, Qwen2/3 and their mixtures of experts, Mistral, Mixtral, OLMo 2, Phi-3),
  // "gemma" (Gemma 2/3: (1+w) norms before and after attention and MLP, scaled embeddings) or
  // "gpt2" (LayerNorm, learned positions, GELU MLP).
  std::string family;
  int64_t vocab_size = 0;         // V, without extensions
  int64_t hidden_size = 0;        // D
  int64_t intermediate_size = 0;  // MLP width
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // query heads H
  int64_t num_kv_heads = 0;  // key/value heads, a divisor of H
  int64_t head_dim = 0;
  int64_t max_positions = 0;  // positions lie in [0, max_positions)
  std::string norm;           // "rms_norm" or "layer_norm"
  double norm_eps = 0.0;
  std::string activation;       // the MLP's: "silu", "gelu" (exact) or "gelu_tanh"
  std::optional<RopeInfo> rope;  // absent: learned absolute positions (gpt2)
  bool qkv_bias = false;         // biases on the q, k, v projections
  bool out_bias = false;         // bias on the attention output projection
  bool mlp_bias = false;         // biases on the MLP projections
  bool tie_word_embeddings = false;
  // Per layer: a key is attended only if query_index - key_index < window; nullopt = full
  // attention. Empty: no layer has a window.
  std::vector<std::optional<int64_t>> sliding_windows;
  double attention_scale = 0.0;                  // the softmax scale
  bool scale_attn_by_inverse_layer_idx = false;  // gpt2 option: layer i also scaled by 1/(i+1)
  std::string dtype;   // what the backbone computes in: "float32", "bfloat16" or "float16"
  std::string device;  // where it computes: "cpu", "cuda:0", ...
  // Special tokens as the checkpoint names them (config.json, or a GGUF file's tokenizer.ggml.*),
  // not checked against V; absent where it names none.
  std::optional<int64_t> bos_id;
  std::vector<int64_t> eos_ids;
  std::optional<int64_t> pad_id;
  // How the frozen weights are held: "expanded" (converted to dtype at load), "stored" (the
  // checkpoint's own types, block-quantised GGUF matrices included, decoded per product) or
  // "int8"/"int4" (quantised at load, docs/latent_api.md), and the memory each kind takes,
  // largest first.
  std::string weights;
  std::vector<WeightKind> storage;

  // Field by field.
  friend AIOS_EXPORT bool operator==(const ModelInfo&, const ModelInfo&);
  friend bool operator!=(const ModelInfo& a, const ModelInfo& b) { return !(a == b); }
};

}  // namespace aios
AIOS_EXPORT_END
