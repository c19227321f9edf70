#include "aios/backbone/config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "aios/json.h"

namespace aios::backbone {

const char* family_name(Family family) {
  switch (family) {
    case Family::kLlama: return "llama";
    case Family::kGemma: return "gemma";
    case Family::kGpt2: return "gpt2";
    case Family::kQwen3Next: return "qwen3_next";
  }
  return "?";
}

ModelInfo describe(const ModelConfig& c) {
  ModelInfo info;
  info.architecture = c.architecture;
  info.family = family_name(c.family);
  info.vocab_size = c.vocab_size;
  info.hidden_size = c.hidden_size;
  info.intermediate_size = c.intermediate_size;
  info.num_layers = c.num_layers;
  info.num_heads = c.num_heads;
  info.num_kv_heads = c.num_kv_heads;
  info.head_dim = c.head_dim;
  info.max_positions = c.max_positions;
  info.norm_eps = c.norm_eps;
  switch (c.activation) {
    case Activation::kSilu: info.activation = "silu"; break;
    case Activation::kGeluExact: info.activation = "gelu"; break;
    case Activation::kGeluTanh: info.activation = "gelu_tanh"; break;
  }
  if (c.family != Family::kGpt2) {
    info.norm = "rms_norm";
    RopeInfo& rope = info.rope.emplace();
    switch (c.rope.type) {
      case RopeConfig::Type::kDefault: rope.type = "default"; break;
      case RopeConfig::Type::kLinear: rope.type = "linear"; break;
      case RopeConfig::Type::kDynamic: rope.type = "dynamic"; break;
      case RopeConfig::Type::kYarn: rope.type = "yarn"; break;
      case RopeConfig::Type::kLongrope: rope.type = "longrope"; break;
      case RopeConfig::Type::kLlama3: rope.type = "llama3"; break;
    }
    rope.rotary_dim = c.rope.rotary_dim;
    rope.attention_factor = c.rope.attention_factor;
    rope.theta = c.rope.theta;
    rope.factor = c.rope.factor;
    rope.low_freq_factor = c.rope.low_freq_factor;
    rope.high_freq_factor = c.rope.high_freq_factor;
    rope.original_max_positions = c.rope.original_max_positions;
  } else {
    info.norm = "layer_norm";
  }
  info.qkv_bias = c.qkv_bias;
  info.out_bias = c.out_bias;
  info.mlp_bias = c.mlp_bias;
  info.tie_word_embeddings = c.tie_word_embeddings;
  info.sliding_windows = c.sliding_windows;
  info.attention_scale = c.attention_scale;
  info.scale_attn_by_inverse_layer_idx = c.scale_attn_by_inverse_layer_idx;
  info.bos_id = c.bos_id;
  info.eos_ids = c.eos_ids;
  info.pad_id = c.pad_id;
  return info;
}

namespace {

using nlohmann::json;

// Typed access to config fields with errors that name "config.<key>".
class Fields {
 public:
  Fields(const json& object, std::string prefix) : object_(object), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return object_.contains(key) && !object_.at(key).is_null(); }
  bool written(const char* key) const { return object_.contains(key); }  // null included
  std::string name(const char* key) const { return prefix_ + "." + key; }

  // An integer in [min, max] (json_integer's check), or `fallback` (in range too) when absent.
  int64_t integer(const char* key, int64_t min, int64_t max, std::optional<int64_t> fallback = std::nullopt) const {
    if (has(key)) return json_integer(object_.at(key), name(key), min, max, ErrorCode::kInvalidArgument);
    if (!fallback) fail(ErrorCode::kInvalidArgument, name(key), "required integer is missing");
    if (*fallback < min || *fallback > max) {
      fail(ErrorCode::kInvalidArgument, name(key), "expected an integer in [{}, {}], got {}", min, max, *fallback);
    }
    return *fallback;
  }
  int64_t positive(const char* key, int64_t limit, std::optional<int64_t> fallback = std::nullopt) const {
    return integer(key, 1, limit, fallback);
  }
  double number(const char* key, std::optional<double> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      fail(ErrorCode::kInvalidArgument, name(key), "required number is missing");
    }
    const json& v = object_.at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>())) {
      fail(ErrorCode::kInvalidArgument, name(key), "expected a finite number, got {}", json_excerpt(v));
    }
    return v.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = object_.at(key);
    if (!v.is_boolean()) fail(ErrorCode::kInvalidArgument, name(key), "expected true or false, got {}", json_excerpt(v));
    return v.get<bool>();
  }
  std::string string(const char* key, std::optional<std::string> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      fail(ErrorCode::kInvalidArgument, name(key), "required string is missing");
    }
    const json& v = object_.at(key);
    if (!v.is_string()) fail(ErrorCode::kInvalidArgument, name(key), "expected a string, got {}", json_excerpt(v));
    return v.get<std::string>();
  }
  const json& at(const char* key) const { return object_.at(key); }
  // A special token's id: absent, null or negative = none.
  std::optional<int64_t> token_id(const json& v, const std::string& field) const {
    if (v.is_null() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0)) return std::nullopt;
    return json_integer(v, field, 0, std::numeric_limits<int64_t>::max(), ErrorCode::kInvalidArgument);
  }
  std::optional<int64_t> token_id(const char* key) const {
    return has(key) ? token_id(object_.at(key), name(key)) : std::nullopt;
  }

 private:
  const json& object_;
  std::string prefix_;
};

// Generous bounds that still stop a config from asking for absurd allocations.
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxWidth = int64_t{1} << 18;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxPositions = int64_t{1} << 24;

Activation parse_activation(const Fields& f, const char* key, const char* fallback) {
  const std::string act = f.string(key, std::string(fallback));
  if (act == "silu" || act == "swish") return Activation::kSilu;
  if (act == "gelu") return Activation::kGeluExact;
  if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") return Activation::kGeluTanh;
  fail(ErrorCode::kInvalidArgument, f.name(key),
       "expected one of silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, got \"{}\"", act);
}

// A list of numbers, one per rotated frequency.
std::vector<double> frequency_factors(const Fields& p, const char* key, int64_t count) {
  const json& list = p.at(key);
  if (!list.is_array() || static_cast<int64_t>(list.size()) != count) {
    fail(ErrorCode::kInvalidArgument, p.name(key), "expected a list of {} numbers (rotary_dim / 2)", count);
  }
  std::vector<double> factors;
  for (const json& v : list) {
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>())) {
      fail(ErrorCode::kInvalidArgument, p.name(key), "expected positive finite numbers, got {}", json_excerpt(v));
    }
    factors.push_back(v.get<double>());
  }
  return factors;
}

// Qwen3-Next and Qwen3.5's language models (Family::kQwen3Next).
bool hybrid_type(const std::string& model_type) {
  return model_type == "qwen3_next" || model_type == "qwen3_5_text" || model_type == "qwen3_5_moe_text";
}

// The rotary embedding of a config whose head_dim and max_positions are read. Of the families here
// Phi-3's and Qwen3-Next's attention rotate part of each head (partial_rotary_factor; Qwen3-Next's
// configs default to a quarter), and Phi-3's configs call LongRoPE "su" or "yarn" too, as
// transformers' Phi3Config reads them.
// Types whose point is to reach past the trained length (dynamic, yarn) raise max_positions to
// original_max_positions * factor. With `layer_type`, the parameters are those nested under that
// layer type (Gemma 3's "full_attention" and "sliding_attention").
RopeConfig parse_rope(const Fields& f, const std::string& model_type, ModelConfig& c, const char* layer_type = nullptr) {
  const bool phi3 = model_type == "phi3";
  RopeConfig rope;
  rope.rotary_dim = c.head_dim;
  // transformers 5 writes "rope_parameters" (theta included); older configs "rope_theta" + "rope_scaling".
  const char* key = f.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  // GptOssConfig's defaults when the config gives none: YaRN from 4096 positions, base 150000.
  const bool gpt_oss = model_type == "gpt_oss";
  static const json kGptOssRope = {{"rope_type", "yarn"}, {"factor", 32.0}, {"beta_fast", 32.0}, {"beta_slow", 1.0},
                                   {"truncate", false}, {"original_max_position_embeddings", 4096}};
  // Gemma 3's global layers default to a base of 1e6 (its sliding ones, and every other family, 1e4).
  const bool global_gemma3 = model_type == "gemma3_text" && (layer_type == nullptr || std::string(layer_type) == "full_attention");
  rope.theta = f.number("rope_theta", global_gemma3 ? 1e6 : gpt_oss ? 150000.0 : 1e4);
  const bool hybrid = hybrid_type(model_type);
  double partial_factor = f.number("partial_rotary_factor", hybrid ? 0.25 : 1.0);
  const char* partial_field = "partial_rotary_factor";
  std::optional<Fields> params;
  if (f.has(key) || gpt_oss) {
    const json* object = f.has(key) ? &f.at(key) : &kGptOssRope;
    std::string name = f.name(key);
    if (layer_type != nullptr && object->is_object()) {
      if (!object->contains(layer_type)) fail(ErrorCode::kInvalidArgument, name, "expected parameters for {}", layer_type);
      object = &object->at(layer_type);
      name += std::string(".") + layer_type;
    }
    if (!object->is_object()) fail(ErrorCode::kInvalidArgument, name, "expected an object, got {}", json_excerpt(*object));
    params.emplace(*object, name);
    rope.theta = params->number("rope_theta", rope.theta);
    partial_factor = params->number(partial_field, partial_factor);
  }
  const std::string partial_name = params && params->has(partial_field) ? params->name(partial_field) : f.name(partial_field);
  if (partial_factor != 1.0) {
    if (!phi3 && !hybrid) {
      fail(ErrorCode::kInvalidArgument, partial_name, "this family rotates whole heads; expected 1, got {}", partial_factor);
    }
    rope.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * partial_factor);
    if (!(partial_factor > 0 && partial_factor <= 1) || rope.rotary_dim <= 0 || rope.rotary_dim % 2 != 0) {
      fail(ErrorCode::kInvalidArgument, partial_name, "expected a factor in (0, 1] giving an even number of channels of head_dim {}, got {}",
           c.head_dim, partial_factor);
    }
  }
  if (!(rope.theta > 0)) fail(ErrorCode::kInvalidArgument, (params ? *params : f).name("rope_theta"), "expected > 0, got {}", rope.theta);
  if (!params) return rope;
  const Fields& p = *params;
  const char* type_key = p.has("rope_type") ? "rope_type" : "type";
  std::string type = p.string(type_key, std::string("default"));
  if (phi3 && (type == "su" || type == "yarn")) type = "longrope";
  // Scaled types name the pretraining length in their parameters, or (Phi-3) beside them.
  auto original = [&] {
    // Phi3Config's own field (default 4096) wins over the parameters', as transformers reads it.
    if (phi3) return f.positive("original_max_position_embeddings", kMaxPositions, 4096);
    if (p.has("original_max_position_embeddings")) return p.positive("original_max_position_embeddings", kMaxPositions);
    return f.positive("original_max_position_embeddings", kMaxPositions, c.max_positions);
  };
  auto factor = [&](std::optional<double> fallback = std::nullopt) {
    const double value = p.number("factor", fallback);
    if (!(value > 0)) fail(ErrorCode::kInvalidArgument, p.name("factor"), "expected > 0, got {}", value);
    return value;
  };
  auto reach = [&] {  // positions these types are meant for
    const double limit = std::floor(static_cast<double>(rope.original_max_positions) * rope.factor);
    if (limit > static_cast<double>(kMaxPositions)) fail(ErrorCode::kInvalidArgument, p.name("factor"), "reaches past {} positions", kMaxPositions);
    c.max_positions = std::max(c.max_positions, static_cast<int64_t>(limit));
  };
  if (type == "default") {
    rope.type = RopeConfig::Type::kDefault;
  } else if (type == "linear") {
    rope.type = RopeConfig::Type::kLinear;
    rope.factor = factor();
  } else if (type == "dynamic") {
    rope.type = RopeConfig::Type::kDynamic;
    rope.factor = factor();
    rope.original_max_positions = c.max_positions;  // transformers scales past max_position_embeddings
    if (rope.rotary_dim <= 2) fail(ErrorCode::kInvalidArgument, p.name(type_key), "dynamic scaling needs more than 2 rotated channels");
    reach();
  } else if (type == "yarn") {
    rope.type = RopeConfig::Type::kYarn;
    rope.original_max_positions = original();
    rope.factor = factor(static_cast<double>(c.max_positions) / static_cast<double>(rope.original_max_positions));
    auto mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    const double m = p.number("mscale", 0.0), m_all = p.number("mscale_all_dim", 0.0);
    rope.attention_factor = p.number("attention_factor", m != 0 && m_all != 0 ? mscale(rope.factor, m) / mscale(rope.factor, m_all)
                                                                                 : mscale(rope.factor, 1.0));
    // A zero or absent beta takes the paper's value, as transformers' `or` does.
    const double fast = p.number("beta_fast", 0.0), slow = p.number("beta_slow", 0.0);
    rope.beta_fast = fast != 0 ? fast : 32.0;
    rope.beta_slow = slow != 0 ? slow : 1.0;
    if (!(rope.beta_fast > 0 && rope.beta_slow > 0)) {
      fail(ErrorCode::kInvalidArgument, p.name("beta_fast"), "expected positive beta_fast and beta_slow, got {} and {}",
           rope.beta_fast, rope.beta_slow);
    }
    if (rope.theta == 1.0) fail(ErrorCode::kInvalidArgument, p.name("rope_theta"), "YaRN needs a base other than 1");
    rope.truncate = p.boolean("truncate", true);
    reach();
  } else if (type == "longrope" || type == "su") {
    rope.type = RopeConfig::Type::kLongrope;
    rope.original_max_positions = original();
    rope.short_factors = frequency_factors(p, "short_factor", rope.rotary_dim / 2);
    rope.long_factors = frequency_factors(p, "long_factor", rope.rotary_dim / 2);
    rope.factor = factor(static_cast<double>(c.max_positions) / static_cast<double>(rope.original_max_positions));
    const double fallback = rope.factor <= 1.0 ? 1.0
        : std::sqrt(1 + std::log(rope.factor) / std::log(static_cast<double>(rope.original_max_positions)));
    rope.attention_factor = p.number("attention_factor", fallback);
  } else if (type == "llama3") {
    rope.type = RopeConfig::Type::kLlama3;
    rope.factor = factor();
    rope.low_freq_factor = p.number("low_freq_factor");
    rope.high_freq_factor = p.number("high_freq_factor");
    rope.original_max_positions = original();
    if (!(rope.high_freq_factor > rope.low_freq_factor)) {
      fail(ErrorCode::kInvalidArgument, p.name("high_freq_factor"), "expected more than low_freq_factor {}, got {}",
           rope.low_freq_factor, rope.high_freq_factor);
    }
  } else {
    fail(ErrorCode::kInvalidArgument, p.name(type_key), "expected one of default, linear, dynamic, yarn, longrope, llama3, got \"{}\"",
         type);
  }
  if (!(rope.attention_factor > 0) || !std::isfinite(rope.attention_factor)) {
    fail(ErrorCode::kInvalidArgument, p.name("attention_factor"), "expected a finite number > 0, got {} (an original length of 1?)",
         rope.attention_factor);
  }
  return rope;
}

// Which layers attend within a sliding window, from the family-specific fields.
std::vector<std::optional<int64_t>> parse_windows(const Fields& f, const std::string& model_type, int64_t layers) {
  std::vector<std::optional<int64_t>> windows;
  if (model_type == "gpt_oss" && !f.has("layer_types")) {  // GptOssConfig: every other layer, from the first
    if (f.written("sliding_window") && !f.has("sliding_window")) return windows;
    const int64_t window = f.positive("sliding_window", kMaxPositions, 128);
    for (int64_t i = 0; i < layers; ++i) windows.emplace_back(i % 2 == 0 ? std::optional<int64_t>(window) : std::nullopt);
    return windows;
  }
  if (!f.has("sliding_window")) return windows;
  if (f.has("layer_types")) {
    const json& types = f.at("layer_types");
    if (!types.is_array() || static_cast<int64_t>(types.size()) != layers) {
      fail(ErrorCode::kInvalidArgument, f.name("layer_types"), "expected an array of {} entries", layers);
    }
    std::vector<bool> sliding;
    for (const json& t : types) {
      if (t != "sliding_attention" && t != "full_attention") {
        fail(ErrorCode::kInvalidArgument, f.name("layer_types"),
             "expected entries full_attention or sliding_attention, got {}", json_excerpt(t));
      }
      sliding.push_back(t == "sliding_attention");
    }
    // Qwen2-MoE writes a window of 0 when no layer slides.
    if (std::find(sliding.begin(), sliding.end(), true) == sliding.end()) return windows;
    const int64_t window = f.positive("sliding_window", kMaxPositions);
    for (bool s : sliding) windows.emplace_back(s ? std::optional<int64_t>(window) : std::nullopt);
  } else if (model_type == "qwen2" || model_type == "qwen3") {
    if (!f.boolean("use_sliding_window", false)) return windows;
    const int64_t window = f.positive("sliding_window", kMaxPositions);
    const int64_t first = f.integer("max_window_layers", INT64_MIN, INT64_MAX, layers);
    for (int64_t i = 0; i < layers; ++i) windows.emplace_back(i >= first ? std::optional<int64_t>(window) : std::nullopt);
  } else if (model_type == "qwen2_moe") {  // every other layer below max_window_layers, as Qwen2MoeConfig
    if (!f.boolean("use_sliding_window", false)) return windows;
    const int64_t window = f.positive("sliding_window", kMaxPositions);
    const int64_t below = f.integer("max_window_layers", INT64_MIN, INT64_MAX, 28);
    for (int64_t i = 0; i < layers; ++i) {
      windows.emplace_back((i + 1) % 2 != 0 && i < below ? std::optional<int64_t>(window) : std::nullopt);
    }
  } else if (model_type == "qwen3_moe" && !f.boolean("use_sliding_window", false)) {
    return windows;  // Qwen3MoeConfig drops the window unless asked
  } else {
    windows.assign(static_cast<std::size_t>(layers), f.positive("sliding_window", kMaxPositions));
  }
  return windows;
}

// Mixtral (every layer, top-k renormalised), Qwen2-MoE and Qwen3-MoE (num_experts,
// moe_intermediate_size, norm_topk_prob, decoder_sparse_step, mlp_only_layers; Qwen2-MoE's shared
// expert).
MoeConfig parse_moe(const Fields& f, const std::string& model_type, const ModelConfig& c) {
  MoeConfig moe;
  const char* count_key = f.has("num_experts") ? "num_experts" : "num_local_experts";
  moe.num_experts = f.positive(count_key, kMaxHeads);
  moe.top_k = f.positive("num_experts_per_tok", moe.num_experts);
  moe.layers.assign(static_cast<std::size_t>(c.num_layers), true);
  if (model_type == "mixtral" || model_type == "gpt_oss") {
    moe.expert_size = c.intermediate_size;
    moe.normalize_top_k = true;
    moe.layout = model_type == "mixtral" ? MoeConfig::Layout::kMixtral : MoeConfig::Layout::kGptOss;
    if (model_type == "gpt_oss") {
      moe.softmax_top_k = true;
      moe.swiglu_limit = f.number("swiglu_limit", 7.0);
      moe.swiglu_alpha = f.number("swiglu_alpha", 1.702);
      if (!(moe.swiglu_limit > 0)) fail(ErrorCode::kInvalidArgument, f.name("swiglu_limit"), "expected > 0, got {}", moe.swiglu_limit);
    }
    return moe;
  }
  moe.expert_size = f.positive("moe_intermediate_size", kMaxWidth);
  moe.normalize_top_k = f.boolean("norm_topk_prob", false);
  if (model_type == "qwen2_moe") moe.shared_expert_size = f.positive("shared_expert_intermediate_size", kMaxWidth);
  const int64_t step = f.positive("decoder_sparse_step", kMaxLayers, 1);
  for (int64_t i = 0; i < c.num_layers; ++i) moe.layers[static_cast<std::size_t>(i)] = (i + 1) % step == 0;
  if (f.has("mlp_only_layers")) {
    const json& list = f.at("mlp_only_layers");
    if (!list.is_array()) fail(ErrorCode::kInvalidArgument, f.name("mlp_only_layers"), "expected a list of layer indices");
    for (std::size_t j = 0; j < list.size(); ++j) {
      const int64_t layer = json_integer(list[j], fmt::format("{}[{}]", f.name("mlp_only_layers"), j), 0, c.num_layers - 1,
                                         ErrorCode::kInvalidArgument);
      moe.layers[static_cast<std::size_t>(layer)] = false;
    }
  }
  return moe;
}

// SmolLM3: no_rope_layers (1 = rotary, 0 = none), or every no_rope_layer_interval-th layer without.
std::vector<bool> parse_rope_layers(const Fields& f, int64_t layers) {
  std::vector<bool> rope(static_cast<std::size_t>(layers));
  if (f.has("no_rope_layers")) {
    const json& list = f.at("no_rope_layers");
    if (!list.is_array() || static_cast<int64_t>(list.size()) != layers) {
      fail(ErrorCode::kInvalidArgument, f.name("no_rope_layers"), "expected a list of {} entries", layers);
    }
    for (std::size_t i = 0; i < list.size(); ++i) {
      rope[i] = json_integer(list[i], fmt::format("{}[{}]", f.name("no_rope_layers"), i), 0, 1, ErrorCode::kInvalidArgument) == 1;
    }
    return rope;
  }
  const int64_t interval = f.positive("no_rope_layer_interval", kMaxLayers, 4);
  for (int64_t i = 0; i < layers; ++i) rope[static_cast<std::size_t>(i)] = (i + 1) % interval != 0;
  return rope;
}

void parse_llama_family(const Fields& f, const std::string& model_type, ModelConfig& c) {
  c.family = Family::kLlama;
  c.vocab_size = f.positive("vocab_size", kMaxVocab);
  c.hidden_size = f.positive("hidden_size", kMaxWidth);
  // Qwen3.5-MoE has experts on every layer and no dense width: its experts' stands in.
  c.intermediate_size = model_type == "qwen3_5_moe_text" && !f.has("intermediate_size")
                            ? f.positive("moe_intermediate_size", kMaxWidth, 512)
                            : f.positive("intermediate_size", kMaxWidth);
  c.num_layers = f.positive("num_hidden_layers", kMaxLayers);
  c.num_heads = f.positive("num_attention_heads", kMaxHeads);
  c.num_kv_heads = f.positive("num_key_value_heads", kMaxHeads, c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0) {
    fail(ErrorCode::kInvalidArgument, f.name("num_key_value_heads"), "expected a divisor of num_attention_heads {}, got {}",
         c.num_heads, c.num_kv_heads);
  }
  if (!f.has("head_dim") && c.hidden_size % c.num_heads != 0) {
    fail(ErrorCode::kInvalidArgument, f.name("hidden_size"), "expected a multiple of num_attention_heads {}, got {}",
         c.num_heads, c.hidden_size);
  }
  c.head_dim = f.positive("head_dim", kMaxWidth, c.hidden_size / c.num_heads);
  if (c.head_dim % 2 != 0) fail(ErrorCode::kInvalidArgument, f.name("head_dim"), "expected an even number, got {}", c.head_dim);
  c.max_positions = f.positive("max_position_embeddings", kMaxPositions, 2048);
  c.norm_eps = f.number("rms_norm_eps", 1e-6);
  c.activation = parse_activation(f, "hidden_act", "silu");
  c.rope = parse_rope(f, model_type, c);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  if (model_type == "qwen2") {
    c.qkv_bias = true;
  } else if (model_type == "llama") {
    c.qkv_bias = c.out_bias = f.boolean("attention_bias", false);
    c.mlp_bias = f.boolean("mlp_bias", false);
  } else if (model_type == "qwen3" || model_type == "qwen3_moe") {
    c.qkv_bias = c.out_bias = f.boolean("attention_bias", false);
    c.qk_norm = QkNorm::kPerHead;
  } else if (model_type == "qwen2_moe") {
    c.qkv_bias = f.boolean("qkv_bias", true);
  } else if (model_type == "olmo2") {
    c.qkv_bias = c.out_bias = f.boolean("attention_bias", false);
    c.qk_norm = QkNorm::kWhole;
    c.norm_outputs = c.norm_scale_float32 = true;
  } else if (model_type == "phi3") {
    c.packed_projections = true;
  } else if (model_type == "gpt_oss") {
    c.qkv_bias = c.out_bias = f.boolean("attention_bias", true);
    c.attention_sinks = c.norm_scale_float32 = true;
  } else if (model_type == "smollm3") {
    c.qkv_bias = c.out_bias = f.boolean("attention_bias", false);
    c.mlp_bias = f.boolean("mlp_bias", false);
    c.rope_layers = parse_rope_layers(f, c.num_layers);
  }
  c.sliding_windows = parse_windows(f, model_type, c.num_layers);
  if (model_type == "mixtral" || model_type == "qwen2_moe" || model_type == "qwen3_moe" || model_type == "gpt_oss") {
    c.moe = parse_moe(f, model_type, c);
  }
  c.attention_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
}

// Qwen3-Next (qwen3_next) and Qwen3.5/3.6's language models (qwen3_5_text, qwen3_5_moe_text): the
// Llama family's fields, which layers are Gated DeltaNet (layer_types, or every
// full_attention_interval-th layer attends), the DeltaNet's shape, and experts where configured:
// Qwen3-Next's as Qwen2-MoE's (shared expert, decoder_sparse_step, mlp_only_layers, norm_topk_prob),
// Qwen3.5-MoE's on every layer, renormalised.
void parse_qwen3_next(const Fields& f, const std::string& model_type, ModelConfig& c) {
  parse_llama_family(f, model_type, c);
  c.family = Family::kQwen3Next;
  c.qkv_bias = c.out_bias = f.boolean("attention_bias", false);
  c.qk_norm = QkNorm::kPerHead;
  c.sliding_windows.clear();
  DeltaNetConfig& d = c.delta_net;
  if (f.has("layer_types")) {
    const json& types = f.at("layer_types");
    if (!types.is_array() || static_cast<int64_t>(types.size()) != c.num_layers) {
      fail(ErrorCode::kInvalidArgument, f.name("layer_types"), "expected an array of {} entries", c.num_layers);
    }
    for (const json& t : types) {
      if (t != "linear_attention" && t != "full_attention") {
        fail(ErrorCode::kInvalidArgument, f.name("layer_types"),
             "expected entries linear_attention or full_attention, got {}", json_excerpt(t));
      }
      d.layers.push_back(t == "linear_attention");
    }
  } else {
    const int64_t interval = f.positive("full_attention_interval", kMaxLayers, 4);
    for (int64_t i = 0; i < c.num_layers; ++i) d.layers.push_back((i + 1) % interval != 0);
  }
  d.num_key_heads = f.positive("linear_num_key_heads", kMaxHeads, 16);
  d.num_value_heads = f.positive("linear_num_value_heads", kMaxHeads, 32);
  if (d.num_value_heads % d.num_key_heads != 0) {
    fail(ErrorCode::kInvalidArgument, f.name("linear_num_value_heads"), "expected a multiple of linear_num_key_heads {}, got {}",
         d.num_key_heads, d.num_value_heads);
  }
  d.key_head_dim = f.positive("linear_key_head_dim", kMaxWidth, 128);
  d.value_head_dim = f.positive("linear_value_head_dim", kMaxWidth, 128);
  d.conv_kernel = f.positive("linear_conv_kernel_dim", 64, 4);
  d.grouped = model_type == "qwen3_next";
  if (model_type == "qwen3_5_text") return;
  if (model_type == "qwen3_5_moe_text") {
    c.moe.num_experts = f.positive("num_experts", kMaxHeads, 256);
    c.moe.top_k = f.positive("num_experts_per_tok", c.moe.num_experts, std::min<int64_t>(8, c.moe.num_experts));
    c.moe.expert_size = f.positive("moe_intermediate_size", kMaxWidth, 512);
    c.moe.normalize_top_k = true;
    c.moe.layers.assign(static_cast<std::size_t>(c.num_layers), true);
  } else if (f.integer("num_experts", 0, kMaxHeads, 512) > 0) {
    c.moe = parse_moe(f, model_type, c);
    c.moe.normalize_top_k = f.boolean("norm_topk_prob", true);
  } else {
    return;
  }
  c.moe.shared_expert_size = f.positive("shared_expert_intermediate_size", kMaxWidth, 512);
}

// Gemma 2 (gemma2) and Gemma 3's text model (gemma3_text): the Llama family's fields, and Gemma's.
void parse_gemma(const Fields& f, const std::string& model_type, ModelConfig& c) {
  parse_llama_family(f, model_type, c);
  const bool gemma3 = model_type == "gemma3_text";
  c.family = Family::kGemma;
  // transformers' Gemma configs read hidden_activation only, and have these defaults.
  c.activation = parse_activation(f, "hidden_activation", "gelu_pytorch_tanh");
  const double scalar = f.number("query_pre_attn_scalar", 256.0);
  if (!(scalar > 0)) fail(ErrorCode::kInvalidArgument, f.name("query_pre_attn_scalar"), "expected > 0, got {}", scalar);
  c.attention_scale = 1.0 / std::sqrt(scalar);
  c.embedding_scale = std::sqrt(static_cast<double>(c.hidden_size));
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", true);
  c.qkv_bias = c.out_bias = f.boolean("attention_bias", false);
  // Absent: Gemma 2 caps at 50 and 30; null: no cap.
  for (auto [key, cap, fallback] : {std::tuple{"attn_logit_softcapping", &c.attn_logit_softcap, gemma3 ? 0.0 : 50.0},
                                    std::tuple{"final_logit_softcapping", &c.final_logit_softcap, gemma3 ? 0.0 : 30.0}}) {
    *cap = f.written(key) ? f.number(key, 0.0) : fallback;
    if (*cap < 0) fail(ErrorCode::kInvalidArgument, f.name(key), "expected a positive cap or null, got {}", *cap);
  }
  if (f.boolean("use_bidirectional_attention", false)) {
    fail(ErrorCode::kInvalidArgument, f.name("use_bidirectional_attention"), "bidirectional Gemma (an encoder) is not supported");
  }
  // Sliding layers from layer_types, or as the configs that predate it imply: every other layer
  // (Gemma 2), all but every sliding_window_pattern-th (Gemma 3, default 6).
  std::vector<bool> sliding;
  if (f.has("layer_types")) {
    for (const auto& w : parse_windows(f, model_type, c.num_layers)) sliding.push_back(w.has_value());
    if (sliding.empty()) sliding.assign(static_cast<std::size_t>(c.num_layers), false);
  } else {
    const int64_t pattern = gemma3 ? f.positive("sliding_window_pattern", kMaxLayers, 6) : 2;
    for (int64_t i = 0; i < c.num_layers; ++i) sliding.push_back((i + 1) % pattern != 0);
  }
  c.sliding_windows.clear();
  if (std::find(sliding.begin(), sliding.end(), true) != sliding.end()) {
    const int64_t window = f.positive("sliding_window", kMaxPositions, 4096);
    for (bool s : sliding) c.sliding_windows.push_back(s ? std::optional<int64_t>(window) : std::nullopt);
  }
  if (!gemma3) return;
  c.qk_norm = QkNorm::kPerHead;
  // transformers 5 nests the parameters per layer type; older configs scale the global layers
  // (rope_theta, rope_scaling) and give the sliding layers' base as rope_local_base_freq, unscaled.
  const bool nested = f.has("rope_parameters") && f.at("rope_parameters").contains("full_attention");
  if (nested) {
    c.rope = parse_rope(f, model_type, c, "full_attention");
    c.local_rope = parse_rope(f, model_type, c, "sliding_attention");
  } else {
    RopeConfig local;
    local.rotary_dim = c.head_dim;
    local.theta = f.number("rope_local_base_freq", 10000.0);
    if (!(local.theta > 0)) fail(ErrorCode::kInvalidArgument, f.name("rope_local_base_freq"), "expected > 0, got {}", local.theta);
    c.local_rope = local;
  }
}

void parse_gpt2(const Fields& f, ModelConfig& c) {
  c.family = Family::kGpt2;
  c.vocab_size = f.positive("vocab_size", kMaxVocab);
  c.hidden_size = f.positive("n_embd", kMaxWidth);
  c.num_layers = f.positive("n_layer", kMaxLayers);
  c.num_heads = c.num_kv_heads = f.positive("n_head", kMaxHeads);
  if (c.hidden_size % c.num_heads != 0) {
    fail(ErrorCode::kInvalidArgument, f.name("n_embd"), "expected a multiple of n_head {}, got {}", c.num_heads,
         c.hidden_size);
  }
  c.head_dim = c.hidden_size / c.num_heads;
  c.intermediate_size = f.positive("n_inner", kMaxWidth, 4 * c.hidden_size);
  c.max_positions = f.positive("n_positions", kMaxPositions);
  c.norm_eps = f.number("layer_norm_epsilon", 1e-5);
  c.activation = parse_activation(f, "activation_function", "gelu_new");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", true);
  c.qkv_bias = c.out_bias = c.mlp_bias = true;
  if (f.boolean("add_cross_attention", false)) {
    fail(ErrorCode::kInvalidArgument, f.name("add_cross_attention"), "expected false (decoder-only), got true");
  }
  c.attention_scale = f.boolean("scale_attn_weights", true) ? 1.0 / std::sqrt(static_cast<double>(c.head_dim)) : 1.0;
  c.scale_attn_by_inverse_layer_idx = f.boolean("scale_attn_by_inverse_layer_idx", false);
}

void parse_special_tokens(const Fields& f, ModelConfig& c) {
  c.bos_id = f.token_id("bos_token_id");
  c.pad_id = f.token_id("pad_token_id");
  if (!f.has("eos_token_id")) return;
  const json& eos = f.at("eos_token_id");
  if (!eos.is_array()) {
    if (auto id = f.token_id(eos, f.name("eos_token_id"))) c.eos_ids.push_back(*id);
    return;
  }
  // Bounded by the text already read; a list this long is no checkpoint's.
  if (eos.size() > 1024) fail(ErrorCode::kInvalidArgument, f.name("eos_token_id"), "expected at most 1024 ids, got {}", eos.size());
  for (std::size_t i = 0; i < eos.size(); ++i) {
    if (auto id = f.token_id(eos[i], fmt::format("{}[{}]", f.name("eos_token_id"), i))) c.eos_ids.push_back(*id);
  }
}

struct KnownArchitecture {
  const char* architecture;
  const char* model_type;
};
constexpr KnownArchitecture kArchitectures[] = {
    {"LlamaForCausalLM", "llama"},
    {"Qwen2ForCausalLM", "qwen2"},
    {"Qwen3ForCausalLM", "qwen3"},
    {"SmolLM3ForCausalLM", "smollm3"},
    {"Olmo2ForCausalLM", "olmo2"},
    {"Phi3ForCausalLM", "phi3"},
    {"MistralForCausalLM", "mistral"},
    {"MixtralForCausalLM", "mixtral"},
    {"Qwen2MoeForCausalLM", "qwen2_moe"},
    {"Qwen3MoeForCausalLM", "qwen3_moe"},
    {"GptOssForCausalLM", "gpt_oss"},
    {"Qwen3NextForCausalLM", "qwen3_next"},
    {"Qwen3_5ForCausalLM", "qwen3_5_text"},
    {"Qwen3_5MoeForCausalLM", "qwen3_5_moe_text"},
    {"Qwen3_5ForConditionalGeneration", "qwen3_5"},  // its text tower
    {"Qwen3_5MoeForConditionalGeneration", "qwen3_5_moe"},
    {"Gemma2ForCausalLM", "gemma2"},
    {"Gemma3ForCausalLM", "gemma3_text"},
    {"Gemma3ForConditionalGeneration", "gemma3"},  // its text tower
    {"GPT2LMHeadModel", "gpt2"},
};

ModelConfig parse_config(const json& root) {
  Fields f(root, "config");

  std::string architecture;
  if (f.has("architectures")) {
    const json& list = f.at("architectures");
    if (!list.is_array() || list.empty() || !list[0].is_string()) {
      fail(ErrorCode::kInvalidArgument, "config.architectures", "expected a non-empty list of names, got {}", json_excerpt(list));
    }
    architecture = list[0].get<std::string>();
  } else {
    const std::string model_type = f.string("model_type");
    for (const auto& known : kArchitectures) {
      if (model_type == known.model_type) architecture = known.architecture;
    }
    if (architecture.empty()) {
      std::vector<const char*> names;
      for (const auto& k : kArchitectures) names.push_back(k.model_type);
      fail(ErrorCode::kInvalidArgument, "config.model_type", "expected one of {}, got \"{}\"", fmt::join(names, ", "),
           model_type);
    }
  }
  const KnownArchitecture* known = nullptr;
  for (const auto& k : kArchitectures) {
    if (architecture == k.architecture) known = &k;
  }
  if (known == nullptr) {
    std::vector<const char*> names;
    for (const auto& k : kArchitectures) names.push_back(k.architecture);
    fail(ErrorCode::kInvalidArgument, "config.architectures", "expected one of {}, got \"{}\"", fmt::join(names, ", "),
         architecture);
  }

  // Pre-quantised checkpoints: only gpt-oss's MXFP4 experts, which load dequantised.
  if (f.has("quantization_config")) {
    const json& q = f.at("quantization_config");
    if (!q.is_object()) fail(ErrorCode::kInvalidArgument, f.name("quantization_config"), "expected an object");
    const Fields quantization(q, f.name("quantization_config"));
    const std::string method = quantization.string("quant_method", std::string());
    if (method != "mxfp4") {
      fail(ErrorCode::kInvalidArgument, quantization.name("quant_method"),
           "pre-quantised checkpoints other than MXFP4 (gpt-oss) are not supported, got \"{}\"", method);
    }
  }

  ModelConfig c;
  c.architecture = architecture;
  if (std::string(known->model_type) == "gpt2") {
    parse_gpt2(f, c);
  } else if (std::string(known->model_type) == "gemma3") {
    // A vision-language checkpoint: its language model, described by text_config, is the backbone;
    // the vision tower and projector stay unread.
    if (!f.has("text_config") || !f.at("text_config").is_object()) {
      fail(ErrorCode::kInvalidArgument, f.name("text_config"), "expected the language model's config object");
    }
    const Fields text(f.at("text_config"), f.name("text_config"));
    parse_gemma(text, "gemma3_text", c);
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", text.boolean("tie_word_embeddings", true));
    c.weight_prefix = "language_model.";
    c.final_logit_softcap = 0.0;  // the conditional-generation model caps no logits, as transformers' does not
    parse_special_tokens(text, c);
    return c;
  } else if (std::string(known->model_type) == "qwen3_5" || std::string(known->model_type) == "qwen3_5_moe") {
    // Likewise: the language model of a vision-language checkpoint, under model.language_model.
    if (!f.has("text_config") || !f.at("text_config").is_object()) {
      fail(ErrorCode::kInvalidArgument, f.name("text_config"), "expected the language model's config object");
    }
    const Fields text(f.at("text_config"), f.name("text_config"));
    parse_qwen3_next(text, std::string(known->model_type) + "_text", c);
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", text.boolean("tie_word_embeddings", false));
    c.weight_prefix = "model.language_model.";
    c.weight_prefix_replaces = "model.";
    parse_special_tokens(text, c);
    return c;
  } else if (hybrid_type(known->model_type)) {
    parse_qwen3_next(f, known->model_type, c);
  } else if (std::string(known->model_type).rfind("gemma", 0) == 0) {
    parse_gemma(f, known->model_type, c);
  } else {
    parse_llama_family(f, known->model_type, c);
  }
  parse_special_tokens(f, c);
  return c;
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& source) {
  const json root = parse_json(json_text, source);
  if (!root.is_object()) fail(ErrorCode::kDataLoss, source, "expected a JSON object");
  return reading_json(source, ErrorCode::kInvalidArgument, [&] { return parse_config(root); });
}

}  // namespace aios::backbone
