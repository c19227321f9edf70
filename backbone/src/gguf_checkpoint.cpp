// The one place that knows llama.cpp's names: metadata keys (`<arch>.embedding_length`, ...) and
// tensor names (`blk.N.attn_q.weight`, ...) against their Hugging Face counterparts.
#include "gguf_checkpoint.h"

#include <algorithm>
#include <functional>
#include <vector>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "dequantize.h"
#include "packed.h"

namespace aios::backbone {

namespace {

struct Architecture {
  const char* gguf;  // general.architecture
  const char* hf;    // config.json "architectures"
  bool permuted_qk;  // llama.cpp's converter permuted q/k rows for rotary embedding
  // What Hugging Face's post_attention_layernorm is called: the MLP's input norm ("ffn_norm") in
  // Llama-like blocks, "post_attention_norm" where llama.cpp names it after its place (Gemma, gpt-oss).
  const char* post_attention_norm = "ffn_norm";
  bool norms_plus_one = false;  // Gemma: llama.cpp stores every norm weight w as 1 + w
};
constexpr Architecture kArchitectures[] = {
    {"llama", "LlamaForCausalLM", true},
    {"qwen2", "Qwen2ForCausalLM", false},
    {"qwen3", "Qwen3ForCausalLM", false},
    {"phi3", "Phi3ForCausalLM", false},
    {"qwen3moe", "Qwen3MoeForCausalLM", false},
    {"qwen2moe", "Qwen2MoeForCausalLM", false},
    {"gemma2", "Gemma2ForCausalLM", false, "post_attention_norm", true},
    {"gemma3", "Gemma3ForCausalLM", false, "post_attention_norm", true},
    {"gpt-oss", "GptOssForCausalLM", false, "post_attention_norm"},
};

const Architecture& architecture_of(const io::GgufFile& file) {
  const auto name = file.string("general.architecture");
  if (!name) fail(ErrorCode::kDataLoss, file.path() + ": general.architecture", "required string is missing");
  for (const Architecture& a : kArchitectures) {
    if (*name == a.gguf) return a;
  }
  std::vector<const char*> names;
  for (const Architecture& a : kArchitectures) names.push_back(a.gguf);
  fail(ErrorCode::kInvalidArgument, file.path() + ": general.architecture", "expected one of {}, got \"{}\"",
       fmt::join(names, ", "), *name);
}

// config.json keys and the GGUF keys (after "<arch>.") they come from.
struct Key {
  const char* hf;
  const char* gguf;
  bool integer;
};
constexpr Key kKeys[] = {
    {"max_position_embeddings", "context_length", true},
    {"hidden_size", "embedding_length", true},
    {"num_hidden_layers", "block_count", true},
    {"intermediate_size", "feed_forward_length", true},
    {"num_attention_heads", "attention.head_count", true},
    {"num_key_value_heads", "attention.head_count_kv", true},
    {"head_dim", "attention.key_length", true},
    {"rope_theta", "rope.freq_base", false},
    {"rms_norm_eps", "attention.layer_norm_rms_epsilon", false},
    {"num_experts", "expert_count", true},
    {"num_experts_per_tok", "expert_used_count", true},
    {"moe_intermediate_size", "expert_feed_forward_length", true},
    {"shared_expert_intermediate_size", "expert_shared_feed_forward_length", true},
    {"sliding_window", "attention.sliding_window", true},
    {"attn_logit_softcapping", "attn_logit_softcapping", false},
    {"final_logit_softcapping", "final_logit_softcapping", false},
};

// "model.layers.N.<hf>" -> "blk.N.<gguf>", the weight or bias suffix kept.
struct LayerName {
  const char* hf;
  const char* gguf;
};
constexpr LayerName kLayerNames[] = {
    {"input_layernorm.", "attn_norm."},   {"pre_feedforward_layernorm.", "ffn_norm."},
    {"post_feedforward_layernorm.", "post_ffw_norm."}, {"self_attn.sinks", "attn_sinks.weight"},
    {"self_attn.q_proj.", "attn_q."},     {"self_attn.k_proj.", "attn_k."},
    {"self_attn.v_proj.", "attn_v."},     {"self_attn.o_proj.", "attn_output."},
    {"mlp.gate_proj.", "ffn_gate."},      {"mlp.up_proj.", "ffn_up."},
    {"mlp.down_proj.", "ffn_down."},     {"self_attn.q_norm.", "attn_q_norm."},
    {"self_attn.k_norm.", "attn_k_norm."}, {"self_attn.qkv_proj.", "attn_qkv."},
    {"mlp.gate_up_proj.", "ffn_up."},
    // Experts stacked [E,...] in one tensor each, as the files store them (the model asks for
    // "<block>experts.<name>.weight" before one expert at a time).
    {"mlp.gate.", "ffn_gate_inp."},                    {"block_sparse_moe.gate.", "ffn_gate_inp."},
    {"mlp.router.", "ffn_gate_inp."},
    {"mlp.shared_expert_gate.", "ffn_gate_inp_shexp."},        {"mlp.shared_expert.gate_proj.", "ffn_gate_shexp."},
    {"mlp.shared_expert.up_proj.", "ffn_up_shexp."},           {"mlp.shared_expert.down_proj.", "ffn_down_shexp."},
    {"mlp.experts.gate_proj.", "ffn_gate_exps."},      {"block_sparse_moe.experts.w1.", "ffn_gate_exps."},
    {"mlp.experts.up_proj.", "ffn_up_exps."},          {"block_sparse_moe.experts.w3.", "ffn_up_exps."},
    {"mlp.experts.down_proj.", "ffn_down_exps."},      {"block_sparse_moe.experts.w2.", "ffn_down_exps."},
};

std::optional<std::string> gguf_name(const std::string& hf, const Architecture& arch) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) != 0) return std::nullopt;
  const std::size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return std::nullopt;
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  const std::string rest = hf.substr(dot + 1);
  const std::string post_attention = "post_attention_layernorm.";
  if (rest.rfind(post_attention, 0) == 0) {
    return fmt::format("blk.{}.{}.{}", layer, arch.post_attention_norm, rest.substr(post_attention.size()));
  }
  for (const LayerName& n : kLayerNames) {
    const std::string from = n.hf;
    if (rest.rfind(from, 0) == 0) return "blk." + layer + "." + n.gguf + rest.substr(from.size());
  }
  return std::nullopt;
}

// llama.cpp stores rows of each head as [2, hd/2] halves interleaved into [hd/2, 2]; swap back.
at::Tensor unpermute(const at::Tensor& w, int64_t heads) {
  std::vector<int64_t> view = {heads, w.size(0) / heads / 2, 2};
  for (int64_t d = 1; d < w.dim(); ++d) view.push_back(w.size(d));
  return w.reshape(view).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// The factors of a GGUF tensor, as a JSON list for config.json's fields.
nlohmann::json factors_of(const io::GgufFile& file, const io::GgufTensor& tensor) {
  const at::Tensor values = dequantize(tensor, file.path() + ": " + tensor.name).to(at::kDouble).contiguous();
  return std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
}

// What llama.cpp's converter writes for Phi-3 beside the common keys: the rotated channels, and
// LongRoPE's factors as two tensors.
void phi3_config(const io::GgufFile& file, nlohmann::json& config, std::map<std::string, std::string>& source) {
  const auto rotary = file.integer("phi3.rope.dimension_count");
  const auto hidden = file.integer("phi3.embedding_length"), heads = file.integer("phi3.attention.head_count");
  if (rotary && hidden && heads && *heads > 0 && *rotary != *hidden / *heads) {
    config["partial_rotary_factor"] = static_cast<double>(*rotary) / static_cast<double>(*hidden / *heads);
    source["config.partial_rotary_factor"] = "phi3.rope.dimension_count";
  }
  const io::GgufTensor* long_factors = file.find("rope_factors_long.weight");
  const io::GgufTensor* short_factors = file.find("rope_factors_short.weight");
  if (long_factors == nullptr && short_factors == nullptr) return;
  if (long_factors == nullptr || short_factors == nullptr) {
    fail(ErrorCode::kDataLoss, file.path() + ": rope_factors_long.weight", "expected both LongRoPE factor tensors, long and short");
  }
  nlohmann::json& scaling = config["rope_scaling"] = {{"rope_type", "longrope"},
                                                      {"long_factor", factors_of(file, *long_factors)},
                                                      {"short_factor", factors_of(file, *short_factors)}};
  source["config.rope_scaling.long_factor"] = "rope_factors_long.weight";
  source["config.rope_scaling.short_factor"] = "rope_factors_short.weight";
  // Phi-3's config.json keeps the pretraining length beside the parameters, where it wins.
  source["config.original_max_position_embeddings"] = "phi3.rope.scaling.original_context_length";
  if (auto length = file.integer("phi3.rope.scaling.original_context_length")) config["original_max_position_embeddings"] = *length;
  source["config.rope_scaling.attention_factor"] = "phi3.rope.scaling.attn_factor";
  if (auto factor = file.number("phi3.rope.scaling.attn_factor")) scaling["attention_factor"] = *factor;
}

// Which layers slide, where the file says: attention.sliding_window_pattern, a period n (every n-th
// layer global, llama.cpp's rule) or one flag per layer (true = sliding), as config.json's layer_types.
void window_pattern(const io::GgufFile& file, const std::string& a, nlohmann::json& config,
                    std::map<std::string, std::string>& source) {
  const std::string key = a + "attention.sliding_window_pattern";
  const io::GgufValue* value = file.find_metadata(key);
  const auto layers = file.integer(a + "block_count");
  if (value == nullptr || !layers) return;
  source["config.layer_types"] = key;
  std::vector<bool> sliding;
  if (value->type == io::GgufType::kArray) {
    for (const io::GgufValue& e : value->elements) {
      if (e.type != io::GgufType::kBool) fail(ErrorCode::kDataLoss, file.path() + ": " + key, "expected a period or booleans");
      sliding.push_back(std::get<bool>(e.scalar));
    }
  } else {
    const auto period = file.integer(key);
    if (*period <= 0) fail(ErrorCode::kInvalidArgument, file.path() + ": " + key, "expected a period > 0, got {}", *period);
    for (int64_t i = 0; i < *layers; ++i) sliding.push_back((i + 1) % *period != 0);
  }
  nlohmann::json& types = config["layer_types"] = nlohmann::json::array();
  for (bool s : sliding) types.push_back(s ? "sliding_attention" : "full_attention");
}

// Gemma: the attention scale, which the files keep only as attention.scale where the converter
// wrote one; otherwise llama.cpp's rule, 1/sqrt(head_dim) but 1/sqrt(hidden/heads) for the 27B
// models (46 layers for Gemma 2, 62 for Gemma 3), whose configs say so.
void gemma_config(const io::GgufFile& file, const Architecture& arch, nlohmann::json& config,
                  std::map<std::string, std::string>& source) {
  const std::string a = std::string(arch.gguf) + ".";
  source["config.query_pre_attn_scalar"] = a + "attention.scale";
  if (auto scale = file.number(a + "attention.scale")) {
    config["query_pre_attn_scalar"] = *scale > 0 ? 1.0 / (*scale * *scale) : 0.0;
    return;
  }
  const auto layers = file.integer(a + "block_count"), hidden = file.integer(a + "embedding_length"),
             heads = file.integer(a + "attention.head_count"), head_dim = file.integer(a + "attention.key_length");
  const bool large = layers == (std::string(arch.gguf) == "gemma2" ? 46 : 62);
  if (large && hidden && heads && *heads > 0) {
    config["query_pre_attn_scalar"] = *hidden / *heads;
  } else if (head_dim) {
    config["query_pre_attn_scalar"] = *head_dim;
  } else if (hidden && heads && *heads > 0) {
    config["query_pre_attn_scalar"] = *hidden / *heads;
  }
}

}  // namespace

ModelConfig gguf_model_config(const io::GgufFile& file) {
  const Architecture& arch = architecture_of(file);
  const std::string a = std::string(arch.gguf) + ".";
  nlohmann::json config = {{"architectures", {arch.hf}}};
  // llama.cpp files Mixtral under llama, with experts.
  if (std::string(arch.gguf) == "llama" && file.integer(a + "expert_count").value_or(0) > 0) {
    config["architectures"] = {"MixtralForCausalLM"};
  }
  // llama.cpp renormalises Qwen3-MoE's top-k weights whatever the source config said, and its
  // files do not say; as transformers' GGUF loader does, so does aios.
  if (std::string(arch.gguf) == "qwen3moe") config["norm_topk_prob"] = true;
  std::map<std::string, std::string> source;  // "config.<hf key>" -> GGUF key, for error messages
  for (const Key& k : kKeys) {
    const std::string key = a + k.gguf;
    source[std::string("config.") + k.hf] = key;
    if (k.integer) {
      if (auto v = file.integer(key)) config[k.hf] = *v;
    } else if (auto v = file.number(key)) {
      config[k.hf] = *v;
    }
  }
  if (config.value("sliding_window", 1) == 0) config.erase("sliding_window");  // Phi-3 writes 0 for none
  if (auto type = file.string(a + "rope.scaling.type"); type && *type != "none") {
    nlohmann::json& scaling = config["rope_scaling"] = {{"rope_type", *type}};
    source["config.rope_scaling.rope_type"] = a + "rope.scaling.type";
    source["config.rope_scaling.factor"] = a + "rope.scaling.factor";
    if (auto factor = file.number(a + "rope.scaling.factor")) scaling["factor"] = *factor;
    source["config.rope_scaling.original_max_position_embeddings"] = a + "rope.scaling.original_context_length";
    if (auto length = file.integer(a + "rope.scaling.original_context_length")) {
      scaling["original_max_position_embeddings"] = *length;
    }
    for (const auto& [hf, gguf] : {std::pair{"beta_fast", "rope.scaling.yarn_beta_fast"},
                                   std::pair{"beta_slow", "rope.scaling.yarn_beta_slow"}}) {
      source[std::string("config.rope_scaling.") + hf] = a + gguf;
      if (auto v = file.number(a + gguf)) scaling[hf] = *v;
    }
  }
  if (std::string(arch.gguf) == "phi3") phi3_config(file, config, source);
  if (std::string(arch.gguf) == "gpt-oss") {
    // Every gpt-oss release rotates with YaRN untruncated (GptOssConfig's default), which the file
    // cannot say; its experts are intermediate_size wide.
    if (config.contains("rope_scaling")) config["rope_scaling"]["truncate"] = false;
    if (config.contains("moe_intermediate_size")) config["intermediate_size"] = config["moe_intermediate_size"];
    // The SwiGLU's clamp: llama.cpp's fixed 7 (every release's swiglu_limit) unless the file gives
    // swiglu_clamp_exp, one limit per layer.
    const std::string key = a + "swiglu_clamp_exp";
    if (auto limits = file.numbers(key)) {
      if (limits->empty() || std::adjacent_find(limits->begin(), limits->end(), std::not_equal_to<>()) != limits->end()) {
        fail(ErrorCode::kInvalidArgument, file.path() + ": " + key, "expected one limit shared by every layer");
      }
      config["swiglu_limit"] = limits->front();
      source["config.swiglu_limit"] = key;
    }
  }
  if (arch.norms_plus_one) gemma_config(file, arch, config, source);
  window_pattern(file, a, config, source);
  const io::GgufTensor* embedding = file.find("token_embd.weight");
  if (embedding == nullptr || embedding->shape.size() != 2) {
    fail(ErrorCode::kDataLoss, file.path() + ": token_embd.weight", "expected a [vocab, hidden] token embedding");
  }
  // Special tokens, which llama.cpp keeps with the tokenizer.
  for (const auto& [hf, gguf] : {std::pair{"bos_token_id", "bos_token_id"}, std::pair{"eos_token_id", "eos_token_id"},
                                 std::pair{"pad_token_id", "padding_token_id"}}) {
    const std::string key = std::string("tokenizer.ggml.") + gguf;
    source[std::string("config.") + hf] = key;
    if (auto v = file.integer(key)) config[hf] = *v;
  }
  config["vocab_size"] = embedding->shape[0];
  source["config.vocab_size"] = "token_embd.weight";
  config["tie_word_embeddings"] = file.find("output.weight") == nullptr;

  ModelConfig c;
  try {
    c = parse_hf_config(config.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), file.path());
  } catch (const Error& e) {
    auto it = source.find(e.field());
    throw Error(e.code(), file.path() + ": " + (it != source.end() ? it->second : e.field()), e.message());
  }
  if (auto rotary = file.integer(a + "rope.dimension_count"); rotary && *rotary != c.rope.rotary_dim) {
    fail(ErrorCode::kInvalidArgument, file.path() + ": " + a + "rope.dimension_count",
         "expected the rotated channels per head, {}, got {}", c.rope.rotary_dim, *rotary);
  }
  // Llama 3.1+ files store their rescaled frequencies as divisors, one per rotated pair.
  if (const io::GgufTensor* factors = file.find("rope_freqs.weight")) {
    const std::string field = file.path() + ": rope_freqs.weight";
    if (c.rope.type != RopeConfig::Type::kDefault) {
      fail(ErrorCode::kInvalidArgument, field, "per-frequency factors together with rope.scaling.type are not supported");
    }
    check_shape(field, {c.rope.rotary_dim / 2}, factors->shape);
    const at::Tensor values = dequantize(*factors, field).to(at::kDouble).contiguous();
    if (!(values > 0).all().item<bool>() || !values.isfinite().all().item<bool>()) {
      fail(ErrorCode::kDataLoss, field, "expected positive finite factors");
    }
    c.rope.short_factors.assign(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
  }
  return c;
}

GgufWeights::GgufWeights(const io::GgufFile& file, const ModelConfig& config)
    : file_(file), num_heads_(config.num_heads), num_kv_heads_(config.num_kv_heads) {}

bool GgufWeights::contains(const std::string& name) const {
  const auto g = gguf_name(name, architecture_of(file_));
  return g && file_.find(*g) != nullptr;
}

std::pair<const io::GgufTensor*, std::string> GgufWeights::find(const std::string& name, at::IntArrayRef shape) const {
  const auto g = gguf_name(name, architecture_of(file_));
  const io::GgufTensor* t = g ? file_.find(*g) : nullptr;
  std::string field = fmt::format("{}: tensor '{}' ({})", file_.path(), g.value_or("?"), name);
  if (t == nullptr) fail(ErrorCode::kDataLoss, field, "tensor missing from the checkpoint");
  // llama.cpp drops a leading 1 (Qwen2-MoE's shared-expert gate, [1,D] in Hugging Face, is [D]).
  const bool squeezed = t->shape.size() + 1 == shape.size() && shape[0] == 1;
  check_shape(field, squeezed ? shape.slice(1) : shape, t->shape);
  return {t, std::move(field)};
}

// llama's q and k rows: llama.cpp's converter interleaved each head's two rotary halves.
int64_t GgufWeights::permuted_heads(const std::string& gguf) const {
  if (!architecture_of(file_).permuted_qk) return 0;
  if (gguf.find(".attn_q.") != std::string::npos) return num_heads_;
  if (gguf.find(".attn_k.") != std::string::npos) return num_kv_heads_;
  return 0;
}

at::Tensor GgufWeights::take(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const {
  const Architecture& arch = architecture_of(file_);
  const auto [t, field] = find(name, shape);
  at::Tensor w = dequantize(*t, field);
  if (w.dim() + 1 == static_cast<int64_t>(shape.size())) w = w.unsqueeze(0);
  if (const int64_t heads = permuted_heads(t->name)) w = unpermute(w, heads);
  if (arch.norms_plus_one && t->name.size() >= 11 && t->name.compare(t->name.size() - 11, 11, "norm.weight") == 0) w = w - 1;
  return w.to(options.device, options.dtype).contiguous();
}

bool GgufWeights::keeps(const io::GgufTensor& t, const LoadOptions& options) {
  const bool wider = (t.type == io::GgmlType::kF16 && options.dtype != at::kHalf) ||
                     (t.type == io::GgmlType::kBF16 && options.dtype != at::kBFloat16);
  const bool quantised = t.type != io::GgmlType::kF32 && t.type != io::GgmlType::kF64 &&
                         t.type != io::GgmlType::kF16 && t.type != io::GgmlType::kBF16;
  // int8/int4 keep the quantised matrices (and quantise the float ones, WeightSource::take_matrix).
  if (quantizes(options)) return quantised;
  const bool keep = options.weights == WeightStorage::kStored ||
                    (options.weights == WeightStorage::kAuto && options.device.is_cpu());
  return keep && (quantised || wider);
}

Matrix GgufWeights::take_matrix(const std::string& name, at::IntArrayRef shape, const LoadOptions& options) const {
  const auto [t, field] = find(name, shape);
  if (shape.size() != 2 || !keeps(*t, options)) return WeightSource::take_matrix(name, shape, options);
  PackedMatrix packed = PackedMatrix::of(*t, field);
  if (const int64_t heads = permuted_heads(t->name)) {
    const at::Tensor rows = at::arange(shape[0], at::TensorOptions().dtype(at::kLong)).unsqueeze(1);
    packed = packed.select_rows(unpermute(rows, heads).flatten());
  }
  return {at::Tensor(), std::make_shared<const PackedMatrix>(std::move(packed))};
}

std::vector<Matrix> GgufWeights::take_matrices(const std::string& name, at::IntArrayRef shape,
                                               const LoadOptions& options) const {
  const auto [t, field] = find(name, shape);
  if (shape.size() != 3 || !keeps(*t, options)) return WeightSource::take_matrices(name, shape, options);
  std::vector<Matrix> out;
  for (int64_t i = 0; i < shape[0]; ++i) {
    out.push_back({at::Tensor(), std::make_shared<const PackedMatrix>(PackedMatrix::of(*t, field, i))});
  }
  return out;
}

}  // namespace aios::backbone
